"""bench.qlora: what 4-bit NF4 buys over lora on the pipeline's 4 x 256 body: the frozen base's weight bytes, peak
training memory and seconds a step, lora and qlora side by side in one run.

    python -m bench.qlora                       # models/4_pretrain if present, else a body of its architecture
    python -m bench.qlora --pretrained models/4_pretrain --steps 10 --length 40 --rounds 3 \
        --out reports/bench/qlora.json

Each method trains in a fresh process of its own, one thread (ru_maxrss is a process's peak, so two methods must not
share one): stages.finetune.build_classifier with params.yaml's knobs (finetune.runs.lora, finetune.extra_runs.qlora;
finetune.train's batch size and dropout), then --steps AdamW steps on batches of random token sequences of --length
tokens (verses average ~35), timed after one untimed warm-up step, in CPU and wall seconds. The methods take turns
for --rounds rounds (a burst of other work on a shared machine then lands on both) and each figure is the median of
its rounds; the ratios compare medians, the rounds' own ratios beside them. Bytes are stages.methods.weight_bytes of
the frozen body (its matrices; embeddings, norms and biases). Without models/4_pretrain (a DVC output) a body of
pretrain's architecture (n_layer, n_embd, n_head; tokenize's vocab_size and block_size) with random weights is saved
and used: bytes, memory and time do not depend on the weights' values.
"""

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from stages.common import load_params, write_json

PRETRAINED = Path("models/4_pretrain")
REPORT = Path("reports/bench/qlora.json")
RUNS = {"lora": "finetune.runs.lora", "qlora": "finetune.extra_runs.qlora"}


def child(method: str, pretrained: Path, steps: int, length: int) -> dict:
    """Build `method`'s classifier on `pretrained` and train it `steps` steps (+1 warm-up); what it measured."""
    import torch

    from stages.finetune import RunParams, TrainParams, build_classifier
    from stages.methods import count_params, weight_bytes

    torch.set_num_threads(1)
    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    t = load_params("finetune.train", TrainParams)
    r = load_params(RUNS[method], RunParams)
    torch.manual_seed(0)
    model = build_classifier(r, pretrained, 7, t).train()
    vocab = model.body.config.vocab_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    cpu, wall = [], []
    for _ in range(steps + 1):
        ids = torch.randint(2, vocab, (t.batch_size, length), generator=g)  # (B, T)
        y = torch.randint(0, 7, (t.batch_size,), generator=g)
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    trainable, total = count_params(model)
    return {"weight_bytes": weight_bytes(model.body), "trainable_params": trainable, "total_params": total,
            "cpu_seconds_per_step": round(sum(cpu[1:]) / steps, 4),
            "wall_seconds_per_step": round(sum(wall[1:]) / steps, 4), "rss_after_imports_mb": after_import,
            "final_loss": round(loss.item(), 4)}  # fmt: skip


def measured(method: str, pretrained: Path, steps: int, length: int) -> dict:
    """child() in a fresh process, with that process's peak RSS (os.wait4's ru_maxrss) in MB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench.qlora", "--child", method, "--pretrained", str(pretrained), "--steps",
           str(steps), "--length", str(length)]  # fmt: skip
    with tempfile.TemporaryFile("w+") as err:  # stderr to a file: a full pipe would block the child
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{err.read()[-3000:]}")
    return {**json.loads(out.splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss // 1024}


def summary(rounds: list[dict]) -> dict:
    """One method's rounds as one record: what every round measured alike once, each time and memory figure as the
    median of its rounds (and the rounds' values, `<key>_by_round`)."""
    from statistics import median

    varying = ("cpu_seconds_per_step", "wall_seconds_per_step", "peak_rss_mb")
    out = {k: v for k, v in rounds[0].items() if k not in varying}
    for k in varying:
        out[k] = median(r[k] for r in rounds)
        out[f"{k}_by_round"] = [r[k] for r in rounds]
    return out


def random_body(folder: Path) -> Path:
    """A GPT-2 of pretrain's architecture with random weights, saved as the pretrain stage saves one."""
    import torch
    import yaml
    from transformers import GPT2Config, GPT2LMHeadModel

    params = yaml.safe_load(Path("params.yaml").read_text())
    p, tok = params["pretrain"], params["tokenize"]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok["vocab_size"], n_positions=tok["block_size"], n_embd=p["n_embd"],
                        n_layer=p["n_layer"], n_head=p["n_head"], bos_token_id=0, eos_token_id=0,
                        pad_token_id=1)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.qlora", description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", type=Path, default=PRETRAINED)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--length", type=int, default=40, help="tokens per training sequence")
    ap.add_argument("--rounds", type=int, default=3, help="turns each method takes, alternating")
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--child", choices=list(RUNS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.pretrained, a.steps, a.length)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        real = a.pretrained.exists()
        body = a.pretrained if real else random_body(Path(tmp, "pretrained"))
        rounds = [{m: measured(m, body, a.steps, a.length) for m in RUNS} for _ in range(a.rounds)]
    runs = {m: summary([r[m] for r in rounds]) for m in RUNS}
    lora, qlora = runs["lora"], runs["qlora"]
    ratio = {k: round(qlora[k] / lora[k], 3) for k in ("peak_rss_mb", "cpu_seconds_per_step", "wall_seconds_per_step")}
    report = {
        "body": str(a.pretrained) if real else "random weights in pretrain's architecture (params.yaml)",
        "steps": a.steps, "length": a.length, "rounds": a.rounds, "threads": 1, **runs,
        "matrix_bytes_ratio": round(qlora["weight_bytes"]["matrices"] / lora["weight_bytes"]["matrices"], 4),
        "base_bytes_ratio": round(sum(qlora["weight_bytes"].values()) / sum(lora["weight_bytes"].values()), 4),
        **{f"{k}_ratio": v for k, v in ratio.items()},
        "cpu_seconds_per_step_ratio_by_round": [round(r["qlora"]["cpu_seconds_per_step"] /
                                                      r["lora"]["cpu_seconds_per_step"], 3) for r in rounds],
        **provenance("bench.qlora", argv),
    }  # fmt: skip
    write_json(report, a.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
