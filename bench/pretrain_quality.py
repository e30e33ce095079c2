"""bench.pretrain_quality: validation perplexity against training seconds, the pretrain stage's recipe vs HF Trainer.

    python -m bench.pretrain_quality                             # writes reports/bench/pretrain_quality.json
    python -m bench.pretrain_quality --together --threads 1      # both at once, a core each (a shared machine)
    python -m bench.pretrain_quality --quick --out /tmp/q.json   # a 2-layer, 64-dim model, a few steps (tests)

Issue 19's target: ours reaches the validation perplexity Trainer ends with in half Trainer's time or less (time
to quality, not steps per second).

  trainer  transformers.Trainer with today's recipe, fixed (TRAINER_RECIPE: AdamW, lr 1e-3, 30 warmup steps, cosine
           to 0.1, 32 x 128-token blocks, 250 steps), on the model params.yaml's pretrain section builds
  ours     stages.pretrain.train, the stage's own loop, with params.yaml's pretrain recipe (the defaults)
Both start from the same seeded init, read the pipeline's train blocks (data/3_tokenize/blocks) and are scored on
the same first `--val-blocks` validation blocks by the same function (stages.pretrain.lm_loss), every
`--eval-every` steps and at the end. The clock is training time: validation is excluded (the stage's curve
`seconds`; a Trainer callback stops its clock while it validates). Each run has a fresh process of its own; one
after the other by default, or both at once (`--together`), so that both see the same load on a machine other
jobs share. seconds_to_target: the first time a run's perplexity is at or under Trainer's final one, interpolated
linearly in loss between its validations; the ratio is ours / Trainer's.
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.pretrain import QUICK, Vocab, trainer_args
from bench.tokenize import git_revision, machine
from stages.common import load_params, seed_everything, write_json
from stages.pretrain import BLOCKS, PretrainParams, build_model, lm_loss, train

REPORT = Path("reports/bench/pretrain_quality.json")
TARGET_RATIO = 0.5
TRAINER_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 30, "min_lr_ratio": 0.1,
                  "batch_size": 32, "grad_accum": 1, "max_steps": 250, "weight_decay": 0.1,
                  "grad_clip": 1.0}  # fmt: skip
QUICK_STEPS = 24  # quick: both runs' steps (Trainer's fixed 250 would take minutes)


def recipes(quick: bool) -> dict[str, PretrainParams]:
    """{ours: params.yaml's recipe, trainer: TRAINER_RECIPE on the same model}: causal, from scratch."""
    p = load_params("pretrain", PretrainParams)
    p = dataclasses.replace(p, objective="causal", init="scratch", checkpoint_every=0, **(QUICK if quick else {}))
    trainer = dataclasses.replace(p, **{**TRAINER_RECIPE, **(QUICK if quick else {})})
    if quick:
        p, trainer = (dataclasses.replace(q, max_steps=QUICK_STEPS, warmup_steps=2) for q in (p, trainer))
    return {"ours": p, "trainer": trainer}


def data(quick: bool, val_blocks: int) -> tuple[object, torch.Tensor, object]:
    """(train blocks, the first val_blocks validation blocks (N, T), tokenizer). quick: 2,000 + 16 synthetic blocks of
    32 ids < 512, each an arithmetic sequence (learnable in a few steps)."""
    if quick:
        g = torch.Generator().manual_seed(0)
        start, stride = torch.randint(3, 512, (2016, 1), generator=g), torch.randint(1, 8, (2016, 1), generator=g)
        blocks = 3 + (start + stride * torch.arange(32)) % 509  # (N, 32)
        return blocks[16:], blocks[:16], Vocab(512)
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    ds = load_from_disk(str(BLOCKS))
    val = torch.tensor(ds["validation"]["input_ids"][:val_blocks], dtype=torch.long)
    return (
        ds["train"].select_columns(["input_ids"]).with_format("torch"),
        val,
        AutoTokenizer.from_pretrained(BLOCKS.parent / "tokenizer"),
    )


def run_ours(p: PretrainParams, train_blocks, val: torch.Tensor, vocab, eval_every: int, target: Path | None = None):
    """The stage's loop; its curve's validation rows: step, seconds (training only), val_loss. With `target`, it
    stops at the first validation at or under the loss that file holds, once the parent has written it there."""
    p = dataclasses.replace(p, eval_every=eval_every, eval_batches=math.ceil(len(val) / p.batch_size))
    seed_everything(p.seed)
    model = build_model(p, vocab, val.shape[1])

    def stop(row: dict) -> bool:
        return target is not None and target.exists() and row["val_loss"] <= float(target.read_text())

    with tempfile.TemporaryDirectory() as tmp:
        curve, _, _ = train(p, model, train_blocks, val, None, Path(tmp) / "ckpt", "bench", stop)
    return [{k: r[k] for k in ("step", "seconds", "val_loss")} for r in curve if "val_loss" in r]


def run_trainer(p: PretrainParams, train_blocks, val: torch.Tensor, vocab, eval_every: int, target=None) -> list[dict]:
    """HF Trainer on the same model and blocks, validated by a callback that stops the clock while it runs."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback

    ids = (
        train_blocks.tolist()
        if isinstance(train_blocks, torch.Tensor)
        else train_blocks.with_format(None)[:]["input_ids"]
    )
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids}).with_format("torch")
    seed_everything(p.seed)
    model = build_model(p, vocab, val.shape[1])
    rows, clock = [], {"start": 0.0, "paused": 0.0}

    class Validate(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every and state.global_step != state.max_steps:
                return
            seconds, t0 = time.perf_counter() - clock["start"] - clock["paused"], time.perf_counter()
            loss = lm_loss(model, val, p.batch_size, torch.device("cpu"))
            clock["paused"] += time.perf_counter() - t0
            rows.append({"step": state.global_step, "seconds": seconds, "val_loss": loss})

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=trainer_args(p, Path(tmp)), train_dataset=ds, callbacks=[Validate()])
        clock["start"] = time.perf_counter()
        trainer.train()
    return rows


def child(run: str, quick: bool, val_blocks: int, eval_every: int, target: Path | None) -> dict:
    p = recipes(quick)[run]
    train_blocks, val, vocab = data(quick, val_blocks)
    curve = (run_ours if run == "ours" else run_trainer)(p, train_blocks, val, vocab, eval_every, target)
    return {"curve": curve, "load_average_1m_end": round(os.getloadavg()[0], 2)}


def seconds_to(curve: list[dict], loss: float) -> float | None:
    """First time the curve's val_loss is <= loss, linear between validations; None if it never is.

    seconds_to([{"seconds": 10, "val_loss": 5.0}, {"seconds": 20, "val_loss": 4.0}], 4.5) -> 15.0
    """
    prev = None
    for row in curve:
        if row["val_loss"] <= loss:
            if prev is None or prev["val_loss"] == row["val_loss"]:
                return row["seconds"]
            share = (prev["val_loss"] - loss) / (prev["val_loss"] - row["val_loss"])
            return prev["seconds"] + share * (row["seconds"] - prev["seconds"])
        prev = row
    return None


def summary(p: PretrainParams, curve: list[dict], block_size: int) -> dict:
    tokens = p.batch_size * p.grad_accum * block_size
    rows = [{**r, "tokens": r["step"] * tokens, "val_perplexity": round(math.exp(r["val_loss"]), 2)} for r in curve]
    keys = ("optimizer", "lr", "schedule", "decay_fraction", "warmup_steps", "min_lr_ratio", "max_steps",
            "batch_size", "grad_accum", "weight_decay", "n_layer", "n_embd", "n_head")  # fmt: skip
    return {
        "recipe": {k: getattr(p, k) for k in keys},
        "final_perplexity": rows[-1]["val_perplexity"],
        "seconds": round(rows[-1]["seconds"], 2),
        "tokens": rows[-1]["tokens"],
        "tokens_per_second": round(rows[-1]["tokens"] / rows[-1]["seconds"], 1),
        "curve": [{**r, "seconds": round(r["seconds"], 2), "val_loss": round(r["val_loss"], 5)} for r in rows],
    }


def bench(quick: bool, together: bool, threads: int | None, val_blocks: int, eval_every: int, full: bool) -> dict:
    host = machine()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "target"  # Trainer's final loss, once known: ours stops at it (unless --full)
        procs, files = {}, {run: (Path(tmp) / f"{run}.out", Path(tmp) / f"{run}.err") for run in ("trainer", "ours")}
        for run in ("trainer", "ours"):  # Trainer first; with --together both at once
            cmd = [sys.executable, "-m", "bench.pretrain_quality", "--child", run, "--val-blocks", str(val_blocks),
                   "--eval-every", str(eval_every), *(["--quick"] if quick else []),
                   *(["--target", str(target)] if run == "ours" and not full else [])]  # fmt: skip
            out, err = (open(f, "w") for f in files[run])
            procs[run] = (subprocess.Popen(cmd, stdout=out, stderr=err, env=env), cmd)
            if run == "trainer" and not together:
                outs["trainer"] = finish(*procs["trainer"], *files["trainer"], target)
        for run, (proc, cmd) in procs.items():
            if run not in outs:
                outs[run] = finish(proc, cmd, *files[run], target if run == "trainer" else None)
    ps, block_size = recipes(quick), 32 if quick else len(data(quick, 1)[1][0])
    runs = {run: summary(ps[run], outs[run]["curve"], block_size) for run in ("ours", "trainer")}
    target_loss = outs["trainer"]["curve"][-1]["val_loss"]
    secs = {run: seconds_to(outs[run]["curve"], target_loss) for run in runs}
    ratio = secs["ours"] / secs["trainer"] if secs["ours"] is not None else None
    return {
        "target_perplexity": runs["trainer"]["final_perplexity"],  # Trainer's at the end of its run
        "seconds_to_target": {k: None if v is None else round(v, 2) for k, v in secs.items()},
        "ratio": None if ratio is None else round(ratio, 3),  # ours / Trainer's; target <= TARGET_RATIO
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio is not None and ratio <= TARGET_RATIO,
        **runs,
        "validation_blocks": val_blocks if not quick else 16,
        "block_size": block_size,
        "mode": "together" if together else "one after the other",
        "ours_stopped_at_target": not full,  # ours ends at its first validation at or under the target
        "torch_threads": threads or torch.get_num_threads(),
        "load_average_1m_end": {run: outs[run]["load_average_1m_end"] for run in outs},
        "quick": quick,
        "machine": host,
        "git_revision": git_revision(),
    }


def finish(proc: subprocess.Popen, cmd: list[str], out: Path, err: Path, target: Path | None) -> dict:
    """A child's JSON once it has ended (a failed child stops the bench with its stderr); for Trainer, its final
    loss written to `target` for ours to stop at."""
    if proc.wait():
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{err.read_text()[-3000:]}")
    result = json.loads(out.read_text().splitlines()[-1])
    if target is not None:
        target.with_suffix(".tmp").write_text(repr(result["curve"][-1]["val_loss"]))
        os.replace(target.with_suffix(".tmp"), target)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a 2-layer, 64-dim model, {QUICK_STEPS} steps each")
    parser.add_argument("--together", action="store_true", help="run both at once (default: Trainer, then ours)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's, one per core)")
    parser.add_argument("--val-blocks", type=int, default=256, help="validation blocks scored (default 256)")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between validations (default 10)")
    parser.add_argument("--out", type=Path, default=REPORT, help=f"where the JSON report goes (default {REPORT})")
    parser.add_argument("--full", action="store_true", help="run ours to its last step (default: stop at target)")
    parser.add_argument("--child", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)  # ours: the file Trainer's final loss lands in
    args = parser.parse_args(argv)
    if args.val_blocks < 1 or args.eval_every < 1:
        parser.error("--val-blocks and --eval-every: must be >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.quick, args.val_blocks, args.eval_every, args.target)))
        return
    report = bench(args.quick, args.together, args.threads, args.val_blocks, args.eval_every, args.full)
    report["command"] = shlex.join(["python", "-m", "bench.pretrain_quality", *argv])
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(report, args.out)
    s = report["seconds_to_target"]
    print(f"Trainer's final perplexity {report['target_perplexity']}: Trainer {s['trainer']} s, ours {s['ours']} s, "
          f"ratio {report['ratio']} (target <= {TARGET_RATIO})")  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
