"""pretrain: a small GPT-2-style transformer trained from scratch, self-supervised, on the packed corpus.

Reads  data/3_tokenize/blocks (train/validation input_ids of block_size), data/3_tokenize/tokenizer
Writes models/4_pretrain          the causal LM (save_pretrained, safetensors) + its tokenizer + meta.json
       metrics/pretrain.json      validation loss and perplexity on all held-out blocks, throughput
       metrics/pretrain_curve.csv train and validation loss by step (`dvc plots show`)

    python -m stages.pretrain

The loop is written out: AdamW (no decay on biases and norms), linear warmup then cosine decay, gradient
clipping and accumulation, periodic validation. A checkpoint every `checkpoint_every` steps holds model,
optimizer, scheduler, RNG state and the step (the data position: batches are a function of seed and step),
so a killed run resumes where it stopped and ends with the same weights.
"""

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.common import atomic_dir, load_params, meta, seed_everything, write_json, write_text
from stages.training import (
    CHECKPOINTS,
    autocast,
    batch_indices,
    count_params,
    device,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    warmup_cosine,
)

BLOCKS = Path("data/3_tokenize/blocks")
TOKENIZER = Path("data/3_tokenize/tokenizer")
OUT = Path("models/4_pretrain")
METRICS = Path("metrics/pretrain.json")
CURVE = Path("metrics/pretrain_curve.csv")


@dataclass(frozen=True)
class PretrainParams:
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    dropout: float
    lr: float  # peak learning rate; fine-tuning uses a fraction of it
    min_lr_ratio: float  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int
    max_steps: int  # optimizer steps; tokens seen = max_steps * batch_size * grad_accum * block_size
    batch_size: int  # blocks per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    weight_decay: float
    grad_clip: float
    eval_every: int  # steps between validation passes (on eval_batches batches)
    eval_batches: int
    checkpoint_every: int  # steps between checkpoints (0 = none)

    def validate(self):
        if self.lr <= 0:
            yield f"lr: must be > 0, got {self.lr}"
        if self.n_embd % self.n_head:
            yield f"n_embd: {self.n_embd} is not divisible by n_head {self.n_head}"
        for name in ("n_layer", "n_head", "max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if not 0 <= self.dropout < 1:
            yield f"dropout: must be in [0, 1), got {self.dropout}"


def build_model(p: PretrainParams, tokenizer, block_size: int):
    """A GPT-2 causal LM from a config (random init, seeded by the caller)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=block_size, n_embd=p.n_embd, n_layer=p.n_layer, n_head=p.n_head,
        resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@torch.no_grad()
def lm_loss(model, blocks: torch.Tensor, batch_size: int, dev, max_batches: int | None = None) -> float:
    """Mean next-token loss over `blocks` (N, T), token-weighted."""
    model.eval()
    total, n = 0.0, 0
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        x = blocks[start : start + batch_size].to(dev)
        with autocast(dev):
            loss = model(input_ids=x, labels=x).loss
        tokens = x.numel() - len(x)  # (B, T) predicts T-1 tokens per row
        total, n = total + loss.item() * tokens, n + tokens
    model.train()
    return total / max(1, n)


def train(p: PretrainParams, model, train_blocks: torch.Tensor, val_blocks: torch.Tensor, ckpt: Path, fp: str):
    """The training loop; returns (curve, seconds, tokens seen in this process)."""
    dev = device()
    model.to(dev).train()
    opt = make_optimizer(model, p.lr, p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, p.warmup_steps, p.max_steps, p.min_lr_ratio)
    )
    info = load_checkpoint(ckpt, model, opt, sched, fp) if p.checkpoint_every else None
    start, curve = (info["step"], info["curve"]) if info else (0, [])
    t0, tokens, running = time.perf_counter(), 0, []
    for step in range(start, p.max_steps):
        for micro in range(p.grad_accum):
            idx = batch_indices(len(train_blocks), p.batch_size, step * p.grad_accum + micro, p.seed)
            x = train_blocks[idx].to(dev)  # (B, T)
            with autocast(dev):
                loss = model(input_ids=x, labels=x).loss / p.grad_accum
            loss.backward()
            running.append(loss.item() * p.grad_accum)
            tokens += x.numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % p.eval_every == 0 or done == p.max_steps:
            val = lm_loss(model, val_blocks, p.batch_size, dev, p.eval_batches)
            curve.append(
                {
                    "step": done,
                    "train_loss": sum(running) / len(running),
                    "val_loss": val,
                    "lr": sched.get_last_lr()[0],
                }
            )
            print(f"step {done}/{p.max_steps}  train {curve[-1]['train_loss']:.4f}  val {val:.4f}  "
                  f"{tokens / (time.perf_counter() - t0):,.0f} tok/s", flush=True)  # fmt: skip
            running = []
        if p.checkpoint_every and done % p.checkpoint_every == 0 and done < p.max_steps:
            save_checkpoint(ckpt, model, opt, sched, done, fp, {"curve": curve})
    return curve, time.perf_counter() - t0, tokens


def run(
    p: PretrainParams,
    blocks: Path = BLOCKS,
    tokenizer_dir: Path = TOKENIZER,
    out: Path = OUT,
    metrics_path: Path = METRICS,
    curve_path: Path = CURVE,
    ckpt: Path = CHECKPOINTS / "pretrain",
) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    seed_everything(p.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = load_from_disk(str(blocks))
    train_blocks = torch.tensor(ds["train"]["input_ids"], dtype=torch.long)  # (N, T)
    val_blocks = torch.tensor(ds["validation"]["input_ids"], dtype=torch.long)
    model = build_model(p, tokenizer, train_blocks.shape[1])
    fp = fingerprint(dataclasses.asdict(p), blocks, tokenizer_dir)
    curve, seconds, tokens = train(p, model, train_blocks, val_blocks, ckpt, fp)

    val_loss = lm_loss(model, val_blocks, p.batch_size, device())
    trainable, total = count_params(model)
    metrics = {
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 2),
        "train_loss": round(curve[-1]["train_loss"], 4) if curve else None,
        "steps": p.max_steps,
        "tokens_seen": p.max_steps * p.grad_accum * p.batch_size * train_blocks.shape[1],
        "epochs": round(p.max_steps * p.grad_accum * p.batch_size / len(train_blocks), 3),
        "params": total,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds) if seconds > 0 else None,
    }
    with atomic_dir(out) as tmp:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(meta(p, **metrics, trainable_params=trainable), tmp / "meta.json")
    write_json(metrics, metrics_path)
    rows = ["step,train_loss,val_loss,lr"] + [
        f"{c['step']},{c['train_loss']:.5f},{c['val_loss']:.5f},{c['lr']:.3e}" for c in curve
    ]
    write_text("\n".join(rows) + "\n", curve_path)
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def main() -> None:
    print(json.dumps(run(load_params("pretrain", PretrainParams)), indent=2))


if __name__ == "__main__":
    main()
