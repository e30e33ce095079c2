"""pretrain: a small transformer trained self-supervised on the packed corpus: causal LM (GPT-2) or masked LM (BERT).

Reads  data/3_tokenize/blocks (train/validation input_ids of block_size), data/3_tokenize/tokenizer;
       pretrain.init's checkpoint when it is not `scratch`: a save_pretrained folder, a hub name or
       package:<python_package>/<subdir> (finetune's specs, resolved by stages.training.checkpoint_source)
Writes models/4_pretrain          the model (save_pretrained, safetensors) + its tokenizer + meta.json
       metrics/pretrain.json      validation loss and perplexity on all held-out blocks, throughput
       metrics/pretrain_live/     dvclive: train loss by step, validation loss by eval step (`dvc plots show`)

    python -m stages.pretrain                                        # one process (a GPU if there is one)
    torchrun --nproc_per_node=2 -m stages.pretrain                   # DDP: gloo on CPUs, nccl on GPUs
    python -m stages.pretrain --params dapt --blocks data/3_tokenize_dapt/blocks \
        --tokenizer data/3_tokenize_dapt/tokenizer --out models/4_dapt --metrics metrics/dapt.json \
        --live metrics/dapt_live --dvc-file study/dvc.yaml          # another section and paths (--help)

Objectives (`objective`): causal predicts every next token; masked (BERT's recipe) picks `mlm_probability` of the
tokens (never a special one), puts [MASK] in 80% of them, a random token in 10%, leaves 10%, and predicts the
originals; its perplexity is exp(loss on the masked tokens), a pseudo-perplexity not comparable with a causal one.
`init: scratch` builds the model from n_layer/n_embd/n_head; a checkpoint continues its weights and architecture, and
its tokenizer must be tokenize's (`tokenize.tokenizer:` the same checkpoint; checked here). A bare body without an LM
head (a BertModel sentence encoder such as all-MiniLM-L6-v2) gets the objective's head newly initialised, its
decoder tied to the word embeddings (load_model prints the new tensors).

The loop is written out: AdamW (no decay on biases and norms) or Muon for the blocks' matrices with AdamW for the
rest (`optimizer`), linear warmup then cosine or warmup-stable-decay (`schedule`), gradient clipping and
accumulation, periodic validation. The batches and their masks are a function of seed and step (the data
position), so a checkpoint every `checkpoint_every` steps (model, optimizer, scheduler, RNG state, step) lets a
killed run resume where it stopped and end with the same weights. Under torchrun each of the N processes takes
1/N of every global micro-batch (batch_size blocks); the loss is the global batch's token mean, so N processes
train the same model as one (up to float summation order). Only rank 0 validates and writes.
"""

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.common import (
    ParamsError,
    atomic_dir,
    covered_by_deps,
    fail,
    load_params,
    meta,
    seed_everything,
    write_json,
)
from stages.training import (
    CHECKPOINTS,
    Muon,
    autocast,
    batch_indices,
    count_params,
    device,
    distributed,
    fingerprint,
    from_checkpoint,
    load_checkpoint,
    save_checkpoint,
    warmup_cosine,
    warmup_stable_decay,
)

BLOCKS = Path("data/3_tokenize/blocks")
TOKENIZER = Path("data/3_tokenize/tokenizer")
OUT = Path("models/4_pretrain")
METRICS = Path("metrics/pretrain.json")
LIVE = Path("metrics/pretrain_live")
OBJECTIVES = ("causal", "masked")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class PretrainParams:
    objective: str  # causal | masked
    init: str  # scratch | a checkpoint to continue: a save_pretrained folder or a hub name
    mlm_probability: float  # masked: share of tokens masked per block
    seed: int
    n_layer: int  # scratch only (a checkpoint brings its own architecture), as are n_embd, n_head, dropout
    n_embd: int
    n_head: int
    dropout: float
    optimizer: str  # adamw | muon (the blocks' matrices; AdamW for embeddings, norms, biases)
    lr: float  # peak learning rate (Muon's matrices too, at AdamW's update RMS); fine-tuning uses a fraction of it
    schedule: str  # cosine | wsd (warmup, flat, linear decay over the last decay_fraction of the steps)
    decay_fraction: float  # wsd: share of max_steps spent decaying
    min_lr_ratio: float  # the schedule decays to lr * min_lr_ratio
    warmup_steps: int
    max_steps: int  # optimizer steps; tokens seen = max_steps * batch_size * grad_accum * block_size
    batch_size: int  # blocks per global micro-batch (split across torchrun's processes)
    grad_accum: int  # micro-batches per optimizer step
    weight_decay: float
    grad_clip: float
    eval_every: int  # steps between validation passes (on eval_batches batches)
    eval_batches: int
    checkpoint_every: int  # steps between checkpoints (0 = none)

    def validate(self):
        if self.objective not in OBJECTIVES:
            yield f"objective: expected causal or masked, got {self.objective!r}"
        if not self.init:
            yield "init: expected scratch or a checkpoint (folder or hub name)"
        if not 0 < self.mlm_probability < 1:
            yield f"mlm_probability: must be in (0, 1), got {self.mlm_probability}"
        if self.lr <= 0:
            yield f"lr: must be > 0, got {self.lr}"
        if self.optimizer not in OPTIMIZERS:
            yield f"optimizer: expected adamw or muon, got {self.optimizer!r}"
        if self.schedule not in SCHEDULES:
            yield f"schedule: expected cosine or wsd, got {self.schedule!r}"
        if not 0 < self.decay_fraction <= 1:
            yield f"decay_fraction: must be in (0, 1], got {self.decay_fraction}"
        if not 0 <= self.min_lr_ratio <= 1:
            yield f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}"
        if self.n_embd % self.n_head:
            yield f"n_embd: {self.n_embd} is not divisible by n_head {self.n_head}"
        for name in ("n_layer", "n_head", "max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if not 0 <= self.dropout < 1:
            yield f"dropout: must be in [0, 1), got {self.dropout}"


@dataclass(frozen=True)
class Masking:
    """What masked LM needs of the tokenizer: the [MASK] id, the id range of random tokens, ids never masked."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float
    seed: int


def masking_for(objective: str, tokenizer, probability: float, seed: int) -> Masking | None:
    """Masking for the masked objective (None for causal); a tokenizer without a mask token fails naming the key."""
    if objective == "causal":
        return None
    if tokenizer.mask_token_id is None:
        raise ParamsError("pretrain.objective: masked needs a mask token; the tokenizer has none (tokenize."
                          "special_tokens.mask for a trained one; a checkpoint's must bring its own)")  # fmt: skip
    return Masking(
        tokenizer.mask_token_id, len(tokenizer), tuple(sorted(tokenizer.all_special_ids)), probability, seed
    )


def saved_masking(model_dir: Path) -> Masking | None:
    """The masking a saved pre-trained model was trained with (its meta.json and tokenizer); None for causal."""
    from transformers import AutoConfig, AutoTokenizer

    meta_file = Path(model_dir) / "meta.json"
    params = json.loads(meta_file.read_text())["params"] if meta_file.exists() else {}
    objective = params.get("objective", "causal")  # a model saved before masked LM existed is causal
    if "objective" not in params and "MaskedLM" in str(AutoConfig.from_pretrained(model_dir).architectures):
        raise ValueError(f"{meta_file}: a masked LM without the pretrain meta.json that says how it was masked")
    if objective == "causal":
        return None
    return masking_for(objective, AutoTokenizer.from_pretrained(model_dir), params["mlm_probability"], params["seed"])


def mask_tokens(x: torch.Tensor, m: Masking, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for masked LM from blocks x (B, T): BERT's 80/10/10; labels -100 where nothing is predicted.

    Every draw comes from `g`, so the masks are a function of its seed (resumes and torchrun ranks agree).
    """
    special = torch.isin(x, torch.tensor(m.special_ids))  # (B, T)
    chosen = (torch.rand(x.shape, generator=g) < m.probability) & ~special
    roll = torch.rand(x.shape, generator=g)  # < 0.8: [MASK]; 0.8..0.9: a random token; >= 0.9: left as it is
    random_ids = torch.randint(m.vocab_size, x.shape, generator=g)
    inputs = torch.where(chosen & (roll < 0.8), m.mask_id, x)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    labels = torch.where(chosen, x, -100)
    return inputs, labels


def make_batch(x: torch.Tensor, masking: Masking | None, step: int, stream: int = 0):
    """(inputs, labels) of blocks x (B, T): for causal the labels are the inputs (shifted in token_loss); for masked
    the masks of training micro-batch `step` (stream 0) or of validation block `step` (stream 1), seeded apart from
    torch's global RNG."""
    if masking is None:
        return x, x
    return mask_tokens(x, masking, torch.Generator().manual_seed((masking.seed * 1_000_003 + step) * 2 + stream))


def count_targets(labels: torch.Tensor, causal: bool) -> int:
    """Tokens predicted: T - 1 per row for causal, the masked ones for masked."""
    return labels.numel() - len(labels) if causal else int((labels != -100).sum())


HEAD_ROWS = 1024  # logit rows at once in the fused head: (1024, V) float32 is 16 MiB at V = 4096, kept in cache


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of logits h @ w.T + b against targets y, HEAD_ROWS rows at a time, with the gradients of
    h, w and b computed in the same pass (Liger-Kernel's fused linear cross-entropy, in plain PyTorch).

    The (N, V) logits, their log-softmax and its gradient never exist whole: each chunk's logits become its
    log-probabilities and then, in place, its gradient softmax - onehot, which two matmuls turn into the chunk's share
    of dL/dh and dL/dw while it is still in cache. backward only scales them by the incoming gradient. Same FLOPs as
    the plain head; a fixed chunk size fixes the summation order (deterministic).
    """

    @staticmethod
    def forward(ctx, h, w, b, y, grads: bool):  # h (N, C), w (V, C), b (V,) or None, y (N,) class ids (no -100)
        grads = grads and any(ctx.needs_input_grad[:3])  # grads: torch.is_grad_enabled() outside (off in here)
        loss = h.new_zeros(())
        gh = torch.empty_like(h) if grads else None
        gw = torch.zeros_like(w) if grads else None
        gb = torch.zeros_like(b) if grads and b is not None else None
        for s in range(0, len(h), HEAD_ROWS):
            hc, yc = h[s : s + HEAD_ROWS], y[s : s + HEAD_ROWS]  # (n, C), (n,)
            z = torch.log_softmax(hc @ w.t() if b is None else torch.addmm(b, hc, w.t()), 1)  # (n, V)
            loss -= z.gather(1, yc[:, None]).sum()
            if grads:  # dL/dlogits = softmax - onehot(y)
                z.exp_()
                z[torch.arange(len(yc)), yc] -= 1
                torch.mm(z, w, out=gh[s : s + HEAD_ROWS])  # (n, C)
                gw.addmm_(z.t(), hc)  # (V, C)
                if gb is not None:
                    gb += z.sum(0)
        ctx.save_for_backward(gh, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, g):
        return *(None if t is None else t * g for t in ctx.saved_tensors), None, None


def split_head(model):
    """(body, transform, decoder) of a GPT-2 LM or a BERT MLM: body(input_ids) -> hidden (B, T, C), transform the
    head's layers before its output matrix (or None), decoder that Linear; None for any other model."""
    from transformers import BertForMaskedLM, GPT2LMHeadModel

    if isinstance(model, GPT2LMHeadModel):
        return lambda ids: model.transformer(input_ids=ids, use_cache=False).last_hidden_state, None, model.lm_head
    if isinstance(model, BertForMaskedLM):
        head = model.cls.predictions
        return lambda ids: model.bert(input_ids=ids).last_hidden_state, head.transform, head.decoder
    return None


def token_loss(model, inputs: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Summed cross-entropy over the predicted tokens (float32), to be divided by the global count.

    GPT-2 and BERT in float32 run the output layer only on the predicted positions (all but the last for causal,
    the masked 15% for masked) and fuse it with the loss (LinearCrossEntropy); other models and autocast (bf16 on a
    GPU) take the plain path through the logits.
    """
    if causal:  # position t predicts token t + 1; the last predicts nothing (shifting labels copies no logits)
        labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T)
    parts = split_head(model)
    if parts is None or torch.is_autocast_enabled(inputs.device.type):
        logits = model(input_ids=inputs).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
        )
    body, transform, decoder = parts
    keep = labels != -100  # (B, T)
    hidden = body(inputs)[keep]  # (N, C): the predicted positions only
    if transform is not None:
        hidden = transform(hidden)
    return LinearCrossEntropy.apply(hidden, decoder.weight, decoder.bias, labels[keep], torch.is_grad_enabled())


class TokenLoss(torch.nn.Module):
    """token_loss as a module, so that DDP wraps the whole forward (its gradient hooks need its own forward)."""

    def __init__(self, model, causal: bool):
        super().__init__()
        self.model, self.causal = model, causal

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_loss(self.model, inputs, labels, self.causal)


def build_model(p: PretrainParams, tokenizer, block_size: int):
    """A GPT-2 causal LM or a BERT masked LM from a config (random init, seeded by the caller).

    GPT-2's gelu_new runs as PyTorch's fused tanh GELU: the same formula (within 2.4e-7 in float32), one kernel
    instead of several on a CPU, and what finetune's load_body runs the body with anyway.
    """
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    if p.objective == "masked":
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=p.n_embd, num_hidden_layers=p.n_layer, num_attention_heads=p.n_head,
            intermediate_size=4 * p.n_embd, max_position_embeddings=block_size, hidden_dropout_prob=p.dropout,
            attention_probs_dropout_prob=p.dropout, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return BertForMaskedLM(config)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=block_size, n_embd=p.n_embd, n_layer=p.n_layer, n_head=p.n_head,
        resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout, activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def load_model(p: PretrainParams, tokenizer, block_size: int):
    """The model to train: built from scratch, or p.init's checkpoint (any spec finetune takes: a folder, a hub name,
    package:<python_package>/<subdir>), checked against tokenize's tokenizer.

    A bare body (BertModel, GPT2Model: no LM head, as sentence encoders ship) gets the objective's head: its body
    weights load into AutoModelForMaskedLM (or ...CausalLM), the head newly initialised with its decoder tied to the
    word embeddings, so only the head's transform and bias start fresh; the new tensors are printed and recorded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    if p.init == "scratch":
        return build_model(p, tokenizer, block_size)
    heads = " ".join(from_checkpoint(AutoConfig.from_pretrained, p.init, "pretrain.init").architectures or [])
    fits = any(
        k in heads for k in (("MaskedLM", "PreTraining") if p.objective == "masked" else ("LMHead", "CausalLM"))
    )
    bare = bool(heads) and all(a.endswith("Model") and "LMHead" not in a for a in heads.split())
    if heads and not fits and not bare:  # e.g. a BERT MLM loaded as a causal LM would attend to the tokens it predicts
        raise ParamsError(f"pretrain.objective: {p.objective} does not fit {p.init}, a {heads}; set the objective it "
                          f"was pre-trained with")  # fmt: skip
    auto = AutoModelForCausalLM if p.objective == "causal" else AutoModelForMaskedLM
    load = lambda source: auto.from_pretrained(source, output_loading_info=True)
    model, loading = from_checkpoint(load, p.init, "pretrain.init")
    if new := sorted(loading["missing_keys"]):  # a bare body's head (tied weights are not missing)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        print(f"pretrain.init: {p.init} is a {heads} without a {p.objective} LM head; newly initialised: "
              f"{', '.join(new)}; decoder {'tied to' if tied else 'NOT tied to'} the word embeddings")  # fmt: skip
    own = from_checkpoint(AutoTokenizer.from_pretrained, p.init, "pretrain.init")
    if own.get_vocab() != tokenizer.get_vocab():
        raise ParamsError(f"pretrain.init: {p.init}'s tokenizer differs from data/3_tokenize's; set tokenize."
                          f"tokenizer: {p.init} so that the blocks are encoded with the checkpoint's own")  # fmt: skip
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 0)
    if positions and block_size > positions:
        raise ParamsError(f"tokenize.block_size: {block_size} exceeds the {positions} positions of {p.init}")
    return model


def make_optimizer(model, lr: float, weight_decay: float, optimizer: str = "adamw") -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms); fused: one kernel for all tensors (on a CPU
    an 8th of the time of the per-tensor loop, a 6th of foreach's). `muon`: Muon for the 2-D weights that are not
    embeddings (the blocks' matrices; the tied output layer is the token embedding), AdamW for the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    matrix = [p for p in params if p.dim() == 2 and id(p) not in embeddings]
    groups = [{"params": matrix, "weight_decay": weight_decay, "muon": True},
              {"params": [p for p in params if id(p) in embeddings], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    return Muon(groups, lr=lr)


def lr_schedule(p: PretrainParams):
    """The LR multiplier by step: warmup then cosine, or warmup-stable-decay."""
    if p.schedule == "wsd":
        return lambda s: warmup_stable_decay(s, p.warmup_steps, p.max_steps, p.decay_fraction, p.min_lr_ratio)
    return lambda s: warmup_cosine(s, p.warmup_steps, p.max_steps, p.min_lr_ratio)


def validation_batch(x: torch.Tensor, masking: Masking | None, first: int):
    """(inputs, labels) of validation blocks x (B, T), rows first..first+B-1 of the split: for masked LM each block's
    mask is drawn from its own seed (its row number), so it depends neither on the batch size nor on the step."""
    if masking is None:
        return x, x
    rows = [make_batch(x[r : r + 1], masking, first + r, stream=1) for r in range(len(x))]
    return torch.cat([i for i, _ in rows]), torch.cat([label for _, label in rows])


@torch.no_grad()
def lm_loss(model, blocks, batch_size: int, dev, max_batches: int | None = None, masking=None) -> float:
    """Mean loss per predicted token over `blocks` (N, T), next-token (masking None) or masked-token, read batch by
    batch: a tensor, or a Dataset of input_ids read from its memory-mapped Arrow files (see blocks_at)."""
    model.eval()
    total, n = 0.0, 0
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        x = blocks_at(blocks, list(range(start, min(start + batch_size, len(blocks)))))
        inputs, labels = validation_batch(x, masking, start)
        with autocast(dev):
            total += token_loss(model, inputs.to(dev), labels.to(dev), masking is None).item()
        n += count_targets(labels, masking is None)
    model.train()
    return total / max(1, n)


def blocks_at(blocks, indices: list[int]) -> torch.Tensor:
    """Blocks `indices` (B, T) of `blocks`: a tensor (N, T), or a Dataset of input_ids in torch format, whose rows
    are read from its memory-mapped Arrow files (a corpus larger than memory)."""
    return blocks[indices] if isinstance(blocks, torch.Tensor) else blocks[indices]["input_ids"].long()


def train(p: PretrainParams, model, train_blocks, val_blocks, masking, ckpt: Path, fp: str, stop=None):
    """The training loop; returns (curve, seconds, tokens seen by all processes). Each curve row is one step:
    step, train_loss (that step's global batch), lr, seconds (training time so far, validation excluded: the clock
    of bench.pretrain_quality), and val_loss at validation steps. train_blocks: see blocks_at. `stop(row)`, if given
    (one process only), is asked after each validation whether to end the run there (a bench's target reached)."""
    import torch.distributed as dist

    rank, world = distributed()
    if p.batch_size % world:
        raise ParamsError(f"pretrain.batch_size: {p.batch_size} blocks do not split over {world} processes")
    dev, causal, shard = device(), masking is None, p.batch_size // world
    model.to(dev).train()
    opt = make_optimizer(model, p.lr, p.weight_decay, p.optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(p))
    info = load_checkpoint(ckpt, model, opt, sched, fp) if p.checkpoint_every else None
    start, curve = (info["step"], info["curve"]) if info else (0, [])
    loss_fn = TokenLoss(model, causal)
    ddp = torch.nn.parallel.DistributedDataParallel(loss_fn) if world > 1 else loss_fn
    t0, tokens, pending = time.perf_counter(), 0, []
    clock, validating = (curve[-1].get("seconds", 0.0) if curve else 0.0), 0.0  # training s before t0; validation s
    for step in range(start, p.max_steps):
        micro_batches = []
        for micro in range(p.grad_accum):  # the global batch of this step and its targets, on every rank
            k = step * p.grad_accum + micro
            blocks = blocks_at(train_blocks, batch_indices(len(train_blocks), p.batch_size, k, p.seed))  # (B, T)
            micro_batches.append(make_batch(blocks, masking, k))  # (inputs, labels), (B, T) each
        n_targets = max(1, sum(count_targets(labels, causal) for _, labels in micro_batches))
        step_loss = torch.zeros((), device=dev)
        for micro, (inputs, labels) in enumerate(micro_batches):
            rows = slice(rank * shard, (rank + 1) * shard)  # this rank's share of the global micro-batch
            x, y = inputs[rows].to(dev), labels[rows].to(dev)  # (B / world, T)
            sync = world == 1 or micro == p.grad_accum - 1  # DDP all-reduces gradients on the last micro-batch only
            with contextlib.nullcontext() if sync else ddp.no_sync(), autocast(dev):
                loss = ddp(x, y) / n_targets  # this rank's part of the global token mean
            (loss * world).backward()  # DDP averages over ranks: x world makes it the sum, i.e. the global mean
            step_loss += loss.detach()
            tokens += x.numel() * world
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(step_loss)  # the global batch's loss, for the curve
        seconds = clock + time.perf_counter() - t0 - validating
        pending.append({"step": step + 1, "train_loss": step_loss, "lr": sched.get_last_lr()[0], "seconds": seconds})
        done = step + 1
        if done % p.eval_every == 0 or done == p.max_steps:
            curve += [{**row, "train_loss": row["train_loss"].item()} for row in pending]  # one sync per eval
            pending = []
            if rank == 0:
                start_val = time.perf_counter()
                curve[-1]["val_loss"] = lm_loss(model, val_blocks, p.batch_size, dev, p.eval_batches, masking)
                validating += time.perf_counter() - start_val
                row = curve[-1]
                print(f"step {done}/{p.max_steps}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
                      f"{tokens / (time.perf_counter() - t0):,.0f} tok/s", flush=True)  # fmt: skip
                if stop is not None and world == 1 and stop(row):
                    break
        if p.checkpoint_every and done % p.checkpoint_every == 0 and done < p.max_steps and rank == 0:
            flushed = curve + [{**row, "train_loss": row["train_loss"].item()} for row in pending]
            save_checkpoint(ckpt, model, opt, sched, done, fp, {"curve": flushed})
    return curve, time.perf_counter() - t0, tokens


def write_live(curve: list[dict], live_dir: Path) -> None:
    """The curve as dvclive logs it (train/loss, val/loss, lr by step), written in one go once training is done:
    a resumed run rewrites the whole curve instead of appending to a half-written one."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False) as live:
        for row in curve:
            live.step = row["step"]
            live.log_metric("train/loss", row["train_loss"])
            live.log_metric("lr", row["lr"])
            if "val_loss" in row:
                live.log_metric("val/loss", row["val_loss"])


def run(
    p: PretrainParams,
    blocks: Path = BLOCKS,
    tokenizer_dir: Path = TOKENIZER,
    out: Path = OUT,
    metrics_path: Path = METRICS,
    live_dir: Path = LIVE,
    ckpt: Path = CHECKPOINTS / "pretrain",
) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    seed_everything(p.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = load_from_disk(str(blocks))
    train_blocks = ds["train"].select_columns(["input_ids"]).with_format("torch")  # N rows, read batch by batch
    block_size = len(train_blocks[0]["input_ids"])
    val_blocks = ds["validation"].select_columns(["input_ids"]).with_format("torch")
    masking = masking_for(p.objective, tokenizer, p.mlm_probability, p.seed)
    model = load_model(p, tokenizer, block_size)
    fp = fingerprint(dataclasses.asdict(p), blocks, tokenizer_dir)
    curve, seconds, tokens = train(p, model, train_blocks, val_blocks, masking, ckpt, fp)
    rank, world = distributed()
    if rank != 0:
        return {}

    val_loss = lm_loss(model, val_blocks, p.batch_size, device(), masking=masking)
    last = curve[-min(p.eval_every, len(curve)) :]
    trainable, total = count_params(model)
    metrics = {
        "objective": p.objective,
        "val_loss": round(val_loss, 4),  # per predicted token: next tokens, or the masked ones
        "val_perplexity": round(math.exp(val_loss), 2),  # masked: a pseudo-perplexity
        "train_loss": round(sum(r["train_loss"] for r in last) / len(last), 4),  # mean of the last eval_every steps
        "steps": p.max_steps,
        "tokens_seen": p.max_steps * p.grad_accum * p.batch_size * block_size,
        "epochs": round(p.max_steps * p.grad_accum * p.batch_size / len(train_blocks), 3),
        "params": total,
        "processes": world,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds) if seconds > 0 else None,
    }
    with atomic_dir(out) as tmp:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(meta(p, **metrics, trainable_params=trainable), tmp / "meta.json")
    write_json(metrics, metrics_path)
    write_live(curve, live_dir)
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def parse_args(argv: list[str] | None = None):
    """The params section and the paths: the defaults are the pipeline's `pretrain` stage; another stage of the same
    recipe (study/dvc.yaml's `dapt`: continued pre-training of a checkpoint) names its own section and paths."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m stages.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--params", default="pretrain", help="params.yaml section, also the stage's name (default: %(default)s)"
    )
    ap.add_argument("--blocks", type=Path, default=BLOCKS, help="tokenize's blocks (default: %(default)s)")
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="tokenize's tokenizer (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=OUT, help="the model folder written (default: %(default)s)")
    ap.add_argument("--metrics", type=Path, default=METRICS, help="metrics JSON written (default: %(default)s)")
    ap.add_argument("--live", type=Path, default=LIVE, help="dvclive folder written (default: %(default)s)")
    ap.add_argument("--dvc-file", type=Path, default=Path("dvc.yaml"), help="holds the stage (default: %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch.distributed as dist

    a = parse_args(argv)
    p = load_params(a.params, PretrainParams)
    local = p.init != "scratch" and Path(p.init).expanduser().exists()
    if local and not covered_by_deps(p.init, a.params, a.dvc_file):
        fail(f"{a.params}.init: the local checkpoint {p.init} is not a dependency of the {a.params} stage; add it "
             f"(or a folder above it) to its deps in {a.dvc_file}, so DVC reruns it when it changes")  # fmt: skip
    try:
        metrics = run(p, a.blocks, a.tokenizer, a.out, a.metrics, a.live, CHECKPOINTS / a.params)
    except ParamsError as e:
        fail(str(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if metrics:
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
