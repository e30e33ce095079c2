"""bench.gpu: the training loops on a GPU, fp32 and bf16 autocast, against the same loops on the CPU, in one run.

    bash scripts/gpu_check.sh          # on a CUDA machine; writes reports/bench/gpu.json
    python -m bench.gpu --cpu --out /tmp/gpu.json   # a dry run: the 'device' is the CPU (CI runs it)

Pre-training (stages.pretrain.train, the default model shape, random token blocks) and fine-tuning
(stages.finetune.train on that body, random labeled sequences) each run `steps` steps three times from the same
seeded init and batches: on the CPU in fp32 (the reference), on the device in fp32, on the device with bf16
autocast. Parity: each device run's per-step losses against the CPU's, as the largest relative difference (fp32
must agree to FP32_TOL, bf16 to BF16_TOL). Speed: tokens per second of pre-training on the device (after one
warm-up step, validation excluded), fp32 and bf16.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.pretrain import Vocab
from bench.tokenize import git_revision, machine
from stages.common import load_params, seed_everything, write_json
from stages.pretrain import PretrainParams, build_model
from stages.pretrain import train as pretrain
from stages.training import runtime

REPORT = Path("reports/bench/gpu.json")
FP32_TOL, BF16_TOL = 1e-3, 5e-2  # largest relative difference of a step's loss against the CPU's


def pretrain_run(p: PretrainParams, vocab, blocks: torch.Tensor, dev: str, bf16: bool, tmp: Path) -> dict:
    """Per-step train losses and tokens/s of the stage's loop on `dev`."""
    with runtime(dev, bf16):
        seed_everything(p.seed)
        model = build_model(p, vocab, blocks.shape[1])
        curve, seconds, tokens = pretrain(p, model, blocks, blocks[:2], None, tmp / f"pt-{dev}-{bf16}", "gpu")
    first = curve[0]["seconds"]  # the first step's time: kernels compiled, memory allocated
    rate = tokens * (len(curve) - 1) / len(curve) / max(curve[-1]["seconds"] - first, 1e-9)
    return {
        "losses": [round(r["train_loss"], 6) for r in curve],
        "tokens_per_second": round(rate, 1),
        "body": model.base_model,
    }  # the transformer under the LM head: what fine-tuning wraps


def finetune_run(body, p_train, seqs: list, labels: list, dev: str, bf16: bool, tmp: Path, tag: str) -> list[float]:
    """Per-epoch train losses of the finetune stage's loop (full fine-tuning, mean_last pooling) on `dev`."""
    import copy

    from stages.finetune import Classifier
    from stages.finetune import train as finetune

    with runtime(dev, bf16):
        seed_everything(0)
        model = Classifier(copy.deepcopy(body).cpu(), 7, p_train.pooling, p_train.dropout)
        _, curve = finetune(
            model, (seqs, labels), (seqs[:16], labels[:16]), 1e-4, p_train, 0, tmp / f"ft-{tag}", "gpu"
        )
    return [round(c["train_loss"], 6) for c in curve]


def worst(losses: list[float], reference: list[float]) -> float:
    """The largest relative difference of a run's losses from the reference's: [1.0, 2.2], [1.0, 2.0] -> 0.1."""
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference, strict=True))


def run(device: str, steps: int, quick: bool) -> dict:
    p = load_params("pretrain", PretrainParams)
    shape = {"n_layer": 2, "n_embd": 64, "n_head": 2, "batch_size": 4} if quick else {}
    p = dataclasses.replace(p, max_steps=steps, warmup_steps=1, eval_every=steps, eval_batches=1, checkpoint_every=0,
                            **shape)  # fmt: skip
    block, vocab_size = (32, 256) if quick else (128, 4096)
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(3, vocab_size, (max(64, p.batch_size * steps), block), generator=g)
    vocab = Vocab(vocab_size)
    from stages.finetune import TrainParams

    t = dataclasses.replace(load_params("finetune.train", TrainParams), epochs=2, batch_size=8, patience=2)
    lengths = torch.randint(5, 30, (64,), generator=g).tolist()
    seqs = [torch.randint(3, vocab_size, (n,), generator=g).tolist() for n in lengths]
    labels = torch.randint(0, 7, (64,), generator=g).tolist()
    out = {"device": device, "steps": steps, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        ref = pretrain_run(p, vocab, blocks, "cpu", False, tmp)
        ft_ref = finetune_run(ref["body"], t, seqs, labels, "cpu", False, tmp, "reference")
        for name, bf16, tol in (("fp32", False, FP32_TOL), ("bf16", True, BF16_TOL)):
            r = pretrain_run(p, vocab, blocks, device, bf16, tmp)
            ft = finetune_run(ref["body"], t, seqs, labels, device, bf16, tmp, name)
            diff, ft_diff = worst(r["losses"], ref["losses"]), worst(ft, ft_ref)
            out["runs"][name] = {"pretrain_losses": r["losses"], "pretrain_max_rel_diff": round(diff, 6),
                                 "finetune_losses": ft, "finetune_max_rel_diff": round(ft_diff, 6),
                                 "tolerance": tol, "parity": diff <= tol and ft_diff <= tol,
                                 "tokens_per_second": r["tokens_per_second"]}  # fmt: skip
        out["cpu_reference"] = {"pretrain_losses": ref["losses"], "finetune_losses": ft_ref,
                                "tokens_per_second": ref["tokens_per_second"]}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="a dry run on the CPU (no GPU needed)")
    ap.add_argument("--steps", type=int, default=20, help="pre-training steps a run")
    ap.add_argument("--quick", action="store_true", help="a 2-layer, 64-dim model (seconds)")
    ap.add_argument("--out", type=Path, default=REPORT)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --cpu for a dry run on the CPU")
    device = "cpu" if args.cpu else "cuda"
    result = run(device, args.steps, args.quick)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    result |= {"gpu": gpu, "machine": machine(), "git_revision": git_revision(),
               "command": " ".join(["python -m bench.gpu", *argv]), "torch": torch.__version__,
               "date": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    write_json(result, args.out)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if "losses" not in kk} for k, v in result["runs"].items()}))
    if not all(r["parity"] for r in result["runs"].values()):
        raise SystemExit("error: a device run's losses differ from the CPU's beyond tolerance (see the report)")


if __name__ == "__main__":
    main()
