"""bench.pretrain_ops: the measurements behind pretrain's choices of kernels and allocator, each against its
alternative, on the default config's shapes.

    python -m bench.pretrain_ops                            # writes reports/bench/pretrain_ops.json (2-3 minutes)
    python -m bench.pretrain_ops --quick --out /tmp/o.json  # small shapes, 2 steps (seconds; for tests)

  step       one training step as stages.pretrain.train takes it (token_loss with the fused head, clipping, fused
             AdamW) on the first batch_size of bench.pretrain's blocks, in a fresh process with and without
             reuse_freed_memory (the setting is process-wide): mean seconds and minor page faults per step over
             `steps` steps, after 2 untimed ones; the best of the alternated processes
  gelu       the tanh GELU the model runs (F.gelu(approximate="tanh"), GPT-2's formula) against the exact erf
             GELU, forward and backward, on the MLP's hidden (batch_size x block_size, 4 n_embd)
  attention  torch's scaled_dot_product_attention (its CPU flash kernel; what HF's GPT-2 calls) against the same
             causal attention written as batched matmuls and a softmax, forward + backward, with q, k, v the
             strided views of one (B, T, 3C) tensor that GPT-2's attention makes

Each op is timed best of `repeats`; seconds are wall time with torch's threads. The results are compared, so a
faster wrong kernel cannot pass: the step's processes must reach the same loss, the two attentions agree to 1e-5.
"""

import argparse
import json
import math
import os
import resource
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.memory import reuse_freed_memory, run_child
from bench.pretrain import setup
from bench.tokenize import git_revision, machine
from stages.common import seed_everything, write_json
from stages.pretrain import build_model, make_optimizer, token_loss

REPORT = Path("reports/bench/pretrain_ops.json")
F = torch.nn.functional


def best(fn, repeats: int) -> float:
    """Fewest seconds of fn() over `repeats` runs, after one untimed."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return min(seconds)


def step_child(reuse: bool, steps: int, quick: bool) -> dict:
    """In this fresh process: {seconds: mean per step, page_faults: per step, loss: the last} of `steps` steps (the
    mean, not the best: page faults come in some steps and not others, and a best step would miss them)."""
    took = reuse_freed_memory() if reuse else False
    p, block_size, blocks, vocab, _ = setup(quick)
    seed_everything(p.seed)
    model = build_model(p, vocab, block_size)
    opt = make_optimizer(model, p.lr, p.weight_decay)
    x = blocks[: p.batch_size]  # (B, T)

    def step() -> float:
        loss = token_loss(model, x, x, causal=True) / (p.batch_size * (block_size - 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    faults, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds, faults = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"reused": took, "seconds": seconds / steps, "page_faults": faults / steps, "loss": loss}


def gelu(n: int, width: int, repeats: int) -> dict:
    """Forward and backward seconds of the tanh and the exact GELU on an (n, width) hidden."""
    x, g = torch.randn(n, width), torch.randn(n, width)
    out = {}
    for name, approximate in (("tanh", "tanh"), ("erf", "none")):
        out[name] = {
            "forward": best(lambda a=approximate: F.gelu(x, approximate=a), repeats),
            "backward": best(lambda a=approximate: torch.ops.aten.gelu_backward(g, x, approximate=a), repeats),
        }
    return out


def attention(b: int, h: int, t: int, d: int, repeats: int) -> dict:
    """Forward + backward seconds of sdpa and of batched-matmul attention, causal, and their largest difference."""
    qkv = torch.randn(b, t, 3 * h * d, requires_grad=True)
    grad = torch.randn(b, t, h * d)
    mask = torch.full((t, t), -math.inf).triu(1)  # (T, T): 0 on and below the diagonal

    def views():  # GPT-2's: split the fused projection, (B, T, C) -> (B, nh, T, hs), strided
        return [z.view(b, t, h, d).transpose(1, 2) for z in qkv.split(h * d, dim=2)]

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def bmm(q, k, v):
        s = torch.baddbmm(mask, q.reshape(b * h, t, d), k.reshape(b * h, t, d).transpose(1, 2), alpha=d**-0.5)
        return torch.bmm(torch.softmax(s, -1), v.reshape(b * h, t, d)).view(b, h, t, d)  # (B, nh, T, hs)

    def run(fn):
        def fwd_bwd():
            fn(*views()).transpose(1, 2).reshape(b, t, h * d).backward(grad)
            qkv.grad = None

        return fwd_bwd

    with torch.no_grad():
        diff = (sdpa(*views()) - bmm(*views())).abs().max().item()
    return {"sdpa": best(run(sdpa), repeats), "bmm": best(run(bmm), repeats), "max_abs_diff": diff}


def bench(repeats: int, quick: bool) -> dict:
    host = machine()
    p, block_size, _, _, _ = setup(quick)
    steps, rounds = (2, 1) if quick else (8, 6)
    step = {"default": [], "reuse": []}
    for _ in range(rounds):  # alternated: a shared machine's speed drifts
        for mode in step:
            cmd = [sys.executable, "-m", "bench.pretrain_ops", "--child", mode, "--steps", str(steps)]
            step[mode].append(run_child(cmd + (["--quick"] if quick else []))[0])
    losses = {r["loss"] for runs in step.values() for r in runs}
    if len(losses) != 1:
        raise SystemExit(f"the step's processes disagree on the loss: {sorted(losses)}")
    fastest = {mode: min(r["seconds"] for r in runs) for mode, runs in step.items()}
    n, h = p.batch_size * block_size, p.n_head
    ops = {
        "gelu": gelu(n, 4 * p.n_embd, repeats),
        "attention": attention(p.batch_size, h, block_size, p.n_embd // h, repeats),
    }
    if ops["attention"]["max_abs_diff"] > 1e-5:
        raise SystemExit(f"the two attentions disagree by {ops['attention']['max_abs_diff']}")
    return {
        "step_seconds": {mode: round(s, 4) for mode, s in fastest.items()},
        "step_speedup_reusing_memory": round(fastest["default"] / fastest["reuse"], 3),
        "step_page_faults": {mode: round(min(r["page_faults"] for r in runs)) for mode, runs in step.items()},
        "reuse_took_effect": all(r["reused"] for r in step["reuse"]),
        "gelu_seconds": {k: {d: round(s, 6) for d, s in v.items()} for k, v in ops["gelu"].items()},
        "gelu_tanh_over_erf": round(sum(ops["gelu"]["tanh"].values()) / sum(ops["gelu"]["erf"].values()), 2),
        "attention_seconds": {k: round(ops["attention"][k], 6) for k in ("sdpa", "bmm")},
        "attention_bmm_over_sdpa": round(ops["attention"]["bmm"] / ops["attention"]["sdpa"], 3),
        "attention_max_abs_diff": ops["attention"]["max_abs_diff"],
        "config": {
            "n_layer": p.n_layer,
            "n_embd": p.n_embd,
            "n_head": p.n_head,
            "block_size": block_size,
            "batch_size": p.batch_size,
        },  # fmt: skip
        "steps": steps,
        "rounds": rounds,
        "repeats": repeats,
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "machine": host,
        "git_revision": git_revision(),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain_ops", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 2-layer, 64-dim shapes, 2 steps (for tests)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each op; the best counts")
    parser.add_argument("--out", type=Path, default=REPORT, help=f"where the JSON report goes (default {REPORT})")
    parser.add_argument("--child", choices=("default", "reuse"), help=argparse.SUPPRESS)  # one step process
    parser.add_argument("--steps", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        print(json.dumps(step_child(args.child == "reuse", args.steps, args.quick)))
        return
    report = bench(2 if args.quick else args.repeats, args.quick)
    report["command"] = shlex.join(["python", "-m", "bench.pretrain_ops", *argv])
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(report, args.out)
    s, faults = report["step_seconds"], report["step_page_faults"]
    print(f"step {s['default']:.3f} s -> {s['reuse']:.3f} s reusing freed memory "
          f"({faults['default']:,} -> {faults['reuse']:,} page faults)")  # fmt: skip
    print(f"tanh GELU {report['gelu_tanh_over_erf']}x the erf GELU's time; batched-matmul attention "
          f"{report['attention_bmm_over_sdpa']}x sdpa's")  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
