"""study: the field's claims over labeled draws, labeled-set sizes and learning rates (outside `dvc repro`).

Reads  data/3_tokenize/task (validation, test, and the pool: every verse of the training chapters),
       data/3_tokenize/blocks (validation blocks: the pre-training objective), models/4_pretrain,
       the augment stage's translators (back-translation of each draw's verses, cached in cache/translations/)
Writes metrics/study.json                 every measurement with its 95% interval, and the claims' verdicts
       reports/study.md                   the claims, each decided by the interval of its gap, and the tables
       reports/study/data_efficiency.csv  test accuracy (mean over draws) per labeled-set size: `dvc plots`
       reports/study/data_efficiency.png  the same with the intervals, drawn
       data/8_study/predictions.jsonl     every cell's test predictions (the intervals can be recomputed)

    dvc repro study/dvc.yaml      # or: python -m stages.study

At each size n of `study.draws`, draw d (d = 0 .. draws[n] - 1) samples n verses per class afresh from the pool,
seeded by d, and seeds training with d; the draws are nested (draw d's 8 verses are among its 32). Every run of
`study.runs` and `study.baselines` trains on each draw; each of `study.sized_runs` (run: sizes) on each draw of the
sizes it lists only, so the costly cells fit the study's budget; each run of `study.augmented` also trains, at the
sizes it lists, on the draw plus its back-translated paraphrases (<run>_bt). Forgetting:
`study.forgetting_run` at the default size (the pipeline's train_per_class) at each of `forgetting_lr_scales`, and
the validation perplexity of the pre-training objective of its fine-tuned body. Early stopping and the baselines'
choices see the validation split only; the test split is only scored. Intervals resample test chapters and draws
(specialist.scoring); claims are decided by them (specialist.claims), as in evaluate.

Checkpoints of one's own (`study.checkpoint_runs`, init checkpoint: MiniLM, its DAPT) train only at
`study.checkpoint_sizes`, on the same draws: their own tokenizer re-encodes the pool, validation and test texts
(finetune.retokenize), their own `lr` is the rate, and `study.checkpoint_train` overrides finetune.train for them (a
leaner early stopping). Baselines over a sentence encoder sit in `study.baselines` beside tfidf: the probe at every
size, SetFit (which fine-tunes the encoder) at checkpoint_sizes only. A run or baseline is looked up in
finetune.runs / baseline.runs, then in their extra_runs.
"""

import gzip
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from specialist.claims import Claim, applicable, line, verdict
from specialist.scoring import Bootstrap
from stages.common import ParamsError, fail, from_dict, load_params, seed_everything, write_json, write_text

TASK = Path("data/3_tokenize/task")
BLOCKS = Path("data/3_tokenize/blocks")
TOKENIZER = Path("data/3_tokenize/tokenizer")
PRETRAINED = Path("models/4_pretrain")
TRANSLATE_METRICS = Path("metrics/translate.json")  # the translators' quality and the paraphrase gate's counts:
AUGMENT_METRICS = Path("metrics/augment.json")  # quoted beside the back-translation results, which they explain
METRICS = Path("metrics/study.json")
REPORT = Path("reports/study.md")
PLOTS = Path("reports/study")
PREDICTIONS = Path("data/8_study/predictions.jsonl.gz")
STUDY_DVC = Path("study/dvc.yaml")
CHECKPOINTS = Path("checkpoints/study")  # finished cells (<key>.json) and the running one's epochs: a killed study
# resumes where it was; removed when the study has written its results


@dataclass(frozen=True)
class StudyParams:
    draws: dict[int, int]  # labeled verses per class -> labeled draws at that size
    runs: list[str]  # finetune.runs keys trained on every draw
    baselines: list[str]  # baseline.runs keys (not augmented) fitted on every draw
    augmented: dict[str, list[int]]  # run or baseline -> the sizes it also trains at with the paraphrases (<run>_bt)
    forgetting_run: str  # a finetune.runs key with init pretrained
    forgetting_lr_scales: list[float]  # its learning rate, as a multiple of pre-training's
    forgetting_draws: int  # draws of the default size it is trained on at each rate
    workers: int = 1  # processes fitting cells at once, each with cores / workers torch threads
    checkpoint_runs: list[str] = field(default_factory=list)  # init checkpoint runs, trained at checkpoint_sizes
    checkpoint_sizes: list[int] = field(default_factory=list)  # ... only (they, and SetFit, take minutes per cell)
    checkpoint_train: dict = field(default_factory=dict)  # finetune.train keys overridden for checkpoint runs
    sized_runs: dict[str, list[int]] = field(default_factory=dict)  # finetune runs trained at these sizes only

    def trained(self) -> list[str]:
        """Every fine-tuned run of the study, in report order."""
        return [*self.runs, *self.sized_runs, *self.checkpoint_runs]

    def validate(self):
        if unknown := [n for n in self.checkpoint_sizes if n not in self.draws]:
            yield f"checkpoint_sizes: {unknown} are not sizes of study.draws"
        if both := sorted(set(self.runs) & set(self.checkpoint_runs)):
            yield f"checkpoint_runs: {both} are in study.runs too; a checkpoint run belongs in checkpoint_runs only"
        if not self.draws or min(self.draws) < 1 or min(self.draws.values()) < 1:
            yield f"draws: {{verses per class: draws}}, each >= 1, got {self.draws}"
        if both := sorted(set(self.sized_runs) & {*self.runs, *self.checkpoint_runs}):
            yield f"sized_runs: {both} are in study.runs or checkpoint_runs too; list a run once"
        if unknown := sorted({n for sizes in self.sized_runs.values() for n in sizes} - set(self.draws)):
            yield f"sized_runs: sizes {unknown} are not sizes of study.draws"
        if unknown := [r for r in self.augmented if r not in [*self.runs, *self.sized_runs, *self.baselines]]:
            yield f"augmented: {unknown} are not in study.runs, sized_runs or baselines"
        if unknown := sorted({n for sizes in self.augmented.values() for n in sizes} - set(self.draws)):
            yield f"augmented: sizes {unknown} are not sizes of study.draws"
        if any(s <= 0 for s in self.forgetting_lr_scales):
            yield f"forgetting_lr_scales: each > 0, got {self.forgetting_lr_scales}"
        if self.forgetting_draws < 1:
            yield f"forgetting_draws: >= 1, got {self.forgetting_draws}"
        if self.workers < 1:
            yield f"workers: >= 1, got {self.workers}"


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: draws, summaries, claims, report


def draw(labels: list[int], n: int, seed: int) -> list[int]:
    """Indices of n examples per class of the pool, in a seeded order per class; sorted.

    Nested: draw(labels, n, s) is, per class, a prefix of draw(labels, m, s) for m > n.
    """
    import random

    picked = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        random.Random(f"{seed}/{label}").shuffle(members)
        picked += members[:n]
    return sorted(picked)


def summary(values: list[float]) -> dict:
    """{"mean", "std", "values"} (std 0 for one value); [0.5, 0.7] -> mean 0.6, std 0.1414."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "values": values}


def cell_summary(results: list[dict], refs: list[int], boot: Bootstrap, n_classes: int) -> dict:
    """A cell's accuracy and macro-F1 with their 95% intervals (test chapters and draws resampled), the spread
    over draws and each draw's own accuracy."""
    s = boot.summary([r["predictions"] for r in results], refs, n_classes)
    accs = [r["accuracy"] for r in results]
    return {**s, "std_over_draws": summary(accs)["std"], "values": accs, "draws": len(results),
            "best_epochs": [r["best_epoch"] for r in results if "best_epoch" in r]}  # fmt: skip


def gap(cells: dict, a: tuple, b: tuple, refs: list[int], boot: Bootstrap) -> dict:
    """Paired gap a - b (cells keyed (run, size)) over their common draws: the same seeds, the same test chapters."""
    k = min(len(cells[a]), len(cells[b]))
    return boot.gap([r["predictions"] for r in cells[a][:k]], [r["predictions"] for r in cells[b][:k]], refs)


def val_accuracy(results: list[dict]) -> dict:
    """{"best_val_accuracy": mean over draws} of a cell whose every draw recorded its validation accuracy (a neural
    run's best epoch, a baseline's chosen grid point), else {}: what claims pick "the best run" by."""
    accs = [r.get("val_accuracy", r.get("chosen", {}).get("val_accuracy")) for r in results]
    return {"best_val_accuracy": statistics.fmean(accs)} if accs and None not in accs else {}


def size_claims(cells: dict, info: dict, sizes: list[int], refs: list[int], boot: Bootstrap) -> list[dict]:
    """Each applicable claim (specialist.claims) at each size, then data efficiency: full with n labels per class
    against scratch with 8n (where 8n was measured)."""
    out = []
    for n in sizes:
        present = {r: {**info[r], **val_accuracy(cells[(r, n)])} for r in info if (r, n) in cells}
        for c in applicable(present):
            g = gap(cells, (c.a, n), (c.b, n), refs, boot)
            out.append({"size": n, "claim": c.text, "a": c.a, "b": c.b, "threshold": c.threshold, "kind": c.kind,
                        **g, "verdict": verdict(c, g["ci95"])})  # fmt: skip
    for n in sizes:
        m = 8 * n
        if ("full", n) in cells and ("scratch", m) in cells:
            c = Claim(
                f"Data efficiency: full with {n} labels per class matches scratch with {m}", "full", "scratch", 0
            )
            g = gap(cells, ("full", n), ("scratch", m), refs, boot)
            out.append({"size": n, "claim": c.text, "a": f"full@{n}", "b": f"scratch@{m}", "threshold": 0,
                        "kind": "at_least", **g, "verdict": verdict(c, g["ci95"])})  # fmt: skip
    return out


def with_ci(c: dict, key: str = "accuracy") -> str:
    return f"{c[key]:.3f} [{c[f'{key}_ci95'][0]:.3f}, {c[f'{key}_ci95'][1]:.3f}]"


def forgetting_claim(f: dict, run: str) -> str:
    """Forgetting grows with the rate: perplexity after fine-tuning rises at every step up the rates, and its
    spread over draws at the highest rate clears the second-highest's."""
    by = sorted((float(k), v["perplexity"]) for k, v in f["lr_scales"].items())  # ascending rate
    if len(by) < 2:
        return ""
    rises = all(a[1]["mean"] < b[1]["mean"] for a, b in zip(by, by[1:], strict=False))
    clear = min(by[-1][1]["values"]) > max(by[-2][1]["values"])
    v = "holds" if rises and clear else "does not hold" if not rises else "not resolved"
    row = ", ".join(f"{k:g}x {p['mean']:.1f}" for k, p in by)
    return (f"- Forgetting grows with the fine-tuning learning rate: **{v}** (validation perplexity of the "
            f"pre-training objective {f['perplexity_before']:.1f} before fine-tuning; after {run} at {row} of "
            f"pre-training's rate; every draw at the highest rate above every draw at the next: "
            f"{'yes' if clear else 'no'}).")  # fmt: skip


def report(s: dict) -> str:
    sizes, de = s["sizes"], s["data_efficiency"]
    runs = [*s["runs"], *s["baselines"]]
    draws = ", ".join(f"{s['draws'][str(n)]} at {n}" for n in sizes)
    table = ["| run | " + " | ".join(f"{n} / class" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for r in runs:
        cells = [de[r].get(str(n)) for n in sizes]
        table.append(f"| {r} | " + " | ".join(with_ci(c) if c else "-" for c in cells) + " |")
    claim_rows = [line(Claim(c["claim"], c["a"], c["b"], c["threshold"], c["kind"]), c, f" at {c['size']} per class")
                  for c in s["claims"]]  # fmt: skip
    lines = [
        "# Study: the field's claims over labeled draws, labeled-set sizes and learning rates", "",
        f"Produced by `dvc repro study/dvc.yaml` (`python -m stages.study`) in {s['seconds'] / 60:.1f} min (the "
        f"cells' CPU time: {s['cell_cpu_seconds'] / 60:.0f} min, {s['workers']} workers); every "
        f"number from metrics/study.json. Test accuracy on {s['test_examples']} verses of {s['test_chapters']} test "
        f"chapters. Labeled draws per size: {draws}. Each draw samples its verses per class afresh from the "
        f"{s['pool']} verses of the training chapters (seeded by the draw's index, nested across sizes) and seeds "
        "training. Accuracy is the mean over draws, with its 95% interval from a bootstrap that resamples the test "
        "chapters and the draws; a gap between two runs is paired (the same chapters, the same draws). Early "
        "stopping and the baselines' choices see the validation split only.", "",
        "## The claims, decided by the interval of the gap", "",
        "A claim holds where the whole 95% interval of its gap clears the threshold, does not hold where the whole "
        "interval misses it, and is not resolved where the interval straddles it.", "",
        *claim_rows, *([forgetting_claim(s["forgetting"], s["forgetting_run"])] if s.get("forgetting") else []),
        "", "## Data efficiency: test accuracy [95% CI] by labeled verses per class", "", *table, "",
        "![data efficiency](study/data_efficiency.png)", "",
        *method_lines(s),
    ]  # fmt: skip
    if aug := s.get("augmentation"):
        lines += ["## Back-translation", "",
                  "| run | size | without | with paraphrases | gain, points [95% CI] | paraphrases added (mean) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r, by_size in aug.items():
            for n, c in by_size.items():
                g = c["gain"]
                lines.append(f"| {r} | {n} | {with_ci(de[r][n])} | {with_ci(c)} | {g['gap']:+.1f} "
                             f"[{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}] | {c['paraphrases']:.0f} |")  # fmt: skip
        lines += ["", *translation_lines(s.get("translation")), ""]
    if f := s.get("forgetting"):
        lines += [f"## Forgetting: {s['forgetting_run']} at {s['default_size']} labels per class", "",
                  f"Validation perplexity of the pre-training objective: {f['perplexity_before']:.2f} before "
                  "fine-tuning.", "",
                  "| learning rate (x pre-training's) | perplexity after (mean ± std over draws) | test accuracy |",
                  "|---|---|---|"]  # fmt: skip
        for k, v in sorted(f["lr_scales"].items(), key=lambda kv: -float(kv[0])):
            lines.append(f"| {float(k):g} | {v['perplexity']['mean']:.2f} ± {v['perplexity']['std']:.2f} "
                         f"| {with_ci(v)} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def method_lines(s: dict) -> list[str]:
    """What each fine-tuning method trains and what its body's weights take in memory (matrices: the linear layers'
    weights, 4-bit ones with their quantization state; other: embeddings, norms, biases), beside its accuracy at the
    default size."""
    if "weight_bytes" not in s:
        return []
    n, de = str(s["default_size"]), s["data_efficiency"]
    out = [f"## Fine-tuning methods: what trains, and the body's weights in memory ({n} per class)", "",
           "| run | method | trainable share | body matrices, MB | body other, MB | test accuracy |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for r, b in s["weight_bytes"].items():
        acc = with_ci(de[r][n]) if n in de.get(r, {}) else "-"
        out.append(f"| {r} | {s['methods'][r]} | {s['trainable_share'][r]:.2%} | {b['matrices'] / 1e6:.2f} | "
                   f"{b['other'] / 1e6:.2f} | {acc} |")  # fmt: skip
    return [*out, ""]


def translation_lines(q: dict | None) -> list[str]:
    """What explains back-translation's effect, in numbers: the translators and the gate's counts."""
    if not q:
        return []
    if "skipped" in q:
        return [f"Back-translation was not measured: {q['skipped']}."]
    drops = ", ".join(f"{k} {v}" for k, v in q["drops"].items())
    return [f"The study's paraphrases: {q['kept']} kept of {q['generated']} generated for its drawn verses by "
            f"{q['translators']}, dropping {drops}. The translators' quality side by side: {TRANSLATE_METRICS} "
            "(reports/translate.md)."]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def perplexity(body, pretrained: Path, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean loss) of the pre-training objective on `blocks` (next-token, or masked-token with pre-training's
    fixed validation masks), with `body` (a fine-tuned transformer body, or a PEFT model, merged first) under the
    pre-trained model's output layer (tied to the body's embeddings)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from stages.finetune import load_body
    from stages.pretrain import lm_loss, saved_masking
    from stages.training import device

    if hasattr(body, "merge_and_unload"):
        body = body.merge_and_unload()
    masking = saved_masking(pretrained)  # None: causal
    auto = AutoModelForCausalLM if masking is None else AutoModelForMaskedLM
    lm = auto.from_pretrained(pretrained, config=load_body(pretrained).config)
    # BERT's AutoModel body has a pooler that its masked LM lacks (and the classifier never uses)
    lm.base_model.load_state_dict({k: v for k, v in body.state_dict().items() if not k.startswith("pooler.")})
    dev = device()
    return math.exp(lm_loss(lm.to(dev), blocks, batch_size, dev, masking=masking))


def fit_neural(run, t, lr: float, train_set, val_set, test_set, pad_id: int, n_labels: int, fp: str,
               blocks=None) -> dict:  # fmt: skip
    """One fine-tuning run (stages.finetune's model and loop, resumable from CHECKPOINTS/train/<fp>): its test
    predictions, and perplexity when `blocks` is given."""
    from stages.finetune import build_classifier, predict, train
    from stages.training import remove_checkpoint

    seed_everything(t.seed)
    model = build_classifier(run, PRETRAINED, n_labels, t)
    best, curve = train(model, train_set, val_set, lr, t, pad_id, CHECKPOINTS / "train" / fp, fp)
    model.load_state_dict(best, strict=False)  # the best trainable tensors; the frozen ones never moved
    remove_checkpoint(CHECKPOINTS / "train" / fp)
    out = {"predictions": predict(model, test_set[0], pad_id, t.eval_batch_size)}
    out["best_epoch"] = max(curve, key=lambda c: c["val_accuracy"])["epoch"]
    out["val_accuracy"] = max(c["val_accuracy"] for c in curve)  # the claims pick the best run on it, never on test
    if blocks is not None:
        out["perplexity"] = perplexity(model.cpu().body, PRETRAINED, blocks)
    return out


def fit_baseline(bp, train_set, val_set, test_set) -> dict:
    from stages.baseline import search

    pipe, chosen, _ = search(train_set, val_set, bp)
    return {"predictions": pipe.predict(test_set[0]).tolist(), "chosen": chosen}


def section(kind: str, name: str, cls):
    """finetune.runs.<name> (or baseline.runs.<name>), else the same key of extra_runs: the study may train runs that
    stay out of `dvc repro`'s matrix (minilm, setfit)."""
    try:
        return load_params(f"{kind}.runs.{name}", cls)
    except ParamsError as e:
        try:
            return load_params(f"{kind}.extra_runs.{name}", cls)
        except ParamsError:
            raise e from None


def checkpoint_inputs(x: "Inputs", run) -> "Inputs":
    """The study's inputs as a checkpoint run sees them: the pool, validation and test texts re-encoded by the
    checkpoint's own tokenizer (finetune.retokenize: its special tokens, truncated at its positions), its pad id, and
    its own learning rate as the rate that lr_scale 1 gives; the fingerprint covers the checkpoint."""
    from datasets import load_from_disk
    from transformers import AutoConfig

    from stages.finetune import checkpoint_tokenizer, retokenize
    from stages.training import checkpoint_identity, checkpoint_source, from_checkpoint

    source = checkpoint_source(run.checkpoint)
    config = from_checkpoint(AutoConfig.from_pretrained, run.checkpoint)
    tokenizer = checkpoint_tokenizer(source)
    limit = min(config.max_position_embeddings, tokenizer.model_max_length)
    task, _ = retokenize(load_from_disk(str(TASK)), tokenizer, limit, ("pool", "validation", "test"))
    ids = {name: list(task[name]["input_ids"]) for name in ("pool", "validation", "test")}
    return replace(x, pool={**x.pool, "input_ids": ids["pool"]}, val={**x.val, "input_ids": ids["validation"]},
                   test={**x.test, "input_ids": ids["test"]}, pad_id=tokenizer.pad_token_id, base_lr=run.lr,
                   fingerprint=x.fingerprint + checkpoint_identity(run.checkpoint, source, config))  # fmt: skip


def fit_encoder_baseline(r, bp, seed: int, train_set, val_set, test_set, embedded: dict) -> dict:
    """A baseline over a sentence encoder (stages.baseline): the probe (frozen encoder; validation and test embedded
    once per study, in `embedded`) or SetFit (the encoder fine-tuned on the draw, seeded by it, in a temp folder)."""
    import tempfile

    from stages.baseline import MAX_LENGTH, embed, fit_encoder, search_c

    if r.setfit:
        with tempfile.TemporaryDirectory(prefix="study-setfit-") as tmp:
            r = replace(r, setfit=replace(r.setfit, seed=seed))
            probe, chosen, _ = fit_encoder(r, train_set, val_set, bp, Path(tmp) / "encoder")
            return {"predictions": probe.predict(test_set[0]).tolist(), "chosen": chosen}
    for split, texts in (("val", val_set[0]), ("test", test_set[0])):
        if (r.features, split) not in embedded:
            embedded[(r.features, split)] = embed(r.features, list(texts), MAX_LENGTH)
    train_x = embed(r.features, train_set[0], MAX_LENGTH)
    lr, chosen, _ = search_c((train_x, train_set[1]), (embedded[(r.features, "val")], val_set[1]), bp)
    return {"predictions": lr.predict(embedded[(r.features, "test")]).tolist(), "chosen": chosen}


def columns(ds, *names) -> list[list]:
    return [list(ds[n]) for n in names]


@dataclass
class Inputs:
    """What every cell reads: the pool to draw from, validation and test, the tokenizer's pad, the paraphrases."""

    pool: dict  # column -> list: input_ids, text, label, book, chapter, verse
    val: dict
    test: dict
    labels: list[str]
    pad_id: int
    base_lr: float
    blocks: torch.Tensor
    fingerprint: str


def load_inputs() -> Inputs:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from stages.training import fingerprint

    task = load_from_disk(str(TASK))
    cols = ("input_ids", "text", "label", "book", "chapter", "verse")
    split = {name: dict(zip(cols, columns(task[name], *cols), strict=True)) for name in ("pool", "validation", "test")}
    return Inputs(
        pool=split["pool"], val=split["validation"], test=split["test"], labels=task["train"].features["label"].names,
        pad_id=AutoTokenizer.from_pretrained(TOKENIZER).pad_token_id,
        base_lr=json.loads((PRETRAINED / "meta.json").read_text())["params"]["lr"],
        blocks=torch.tensor(load_from_disk(str(BLOCKS))["validation"]["input_ids"], dtype=torch.long),
        fingerprint=fingerprint({}, TASK, TOKENIZER, PRETRAINED, BLOCKS),
    )  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One fit of the study: a run (finetune.runs or baseline.runs key) on one labeled draw of one size."""

    run: str
    size: int
    draw: int
    neural: bool = True  # a fine-tuning run; else a baseline
    lr_scale: float | None = None  # a fine-tuning run's rate, x pre-training's
    augmented: bool = False  # plus the draw's paraphrases (cell name <run>_bt)
    perplexity: bool = False  # also measure the fine-tuned body's pre-training perplexity
    main: bool = True  # a cell of the tables; False: only the forgetting sweep's other rates

    @property
    def name(self) -> str:
        return f"{self.run}_bt" if self.augmented else self.run


_WORKER: dict = {}  # a worker process's inputs, loaded once by init_worker


def init_worker(threads: int, params: dict, paraphrases: dict) -> None:
    """A worker's state: the inputs, the params (t0, t_own, runs, bp, baselines), the paraphrases; `threads` torch
    threads. A checkpoint run's re-encoded inputs and an encoder's embeddings are made once, when first needed."""
    torch.set_num_threads(threads)
    _WORKER.update(x=load_inputs(), paraphrases=paraphrases, own_inputs={}, embedded={}, **params)


def inputs_for(run: str) -> Inputs:
    """The inputs as fine-tuning run `run` sees them: a checkpoint run's re-encoded by its own tokenizer."""
    w = _WORKER
    r = w["runs"][run]
    if r.init != "checkpoint":
        return w["x"]
    if run not in w["own_inputs"]:
        w["own_inputs"][run] = checkpoint_inputs(w["x"], r)
    return w["own_inputs"][run]


def fit_cell(cell: Cell) -> str:
    """Fits `cell` unless a finished copy is in CHECKPOINTS; returns the file holding its result."""
    from stages.baseline import recorded as recorded_baseline
    from stages.finetune import recorded
    from stages.training import fingerprint

    w = _WORKER
    x = inputs_for(cell.run) if cell.neural else w["x"]
    idx = draw(x.pool["label"], cell.size, cell.draw)
    keys = ((x.pool["book"][i], x.pool["chapter"][i], x.pool["verse"][i]) for i in idx)
    extra = [e for k in keys for e in w["paraphrases"].get(k, [])] if cell.augmented else []
    labels = [x.pool["label"][i] for i in idx] + [e[2] for e in extra]
    if cell.neural:
        own = w["runs"][cell.run].init == "checkpoint"
        t = replace(w["t_own"] if own else w["t0"], seed=cell.draw)
        train_set = ([x.pool["input_ids"][i] for i in idx] + [e[1] for e in extra], labels)
        what = {"run": recorded(w["runs"][cell.run]), "train": asdict(t), "lr_scale": cell.lr_scale,
                "seed": cell.draw, "train_set": train_set, "perplexity": cell.perplexity}  # fmt: skip
    else:
        r = w["baselines"][cell.run]
        train_set = ([x.pool["text"][i] for i in idx] + [e[0] for e in extra], labels)
        what = {"baseline": asdict(w["bp"]), "seed": cell.draw, "train_set": train_set}
        what |= {"run": recorded_baseline(r)} if r.features != "tfidf" else {}
    key = fingerprint({**what, "inputs": x.fingerprint})
    path = CHECKPOINTS / f"{key}.json"
    if path.exists():
        return str(path)
    t1, c1 = time.perf_counter(), time.process_time()
    val, test = (x.val["input_ids"], x.val["label"]), (x.test["input_ids"], x.test["label"])
    texts = (x.val["text"], x.val["label"]), (x.test["text"], x.test["label"])
    if cell.neural:
        blocks = x.blocks if cell.perplexity else None
        res = fit_neural(w["runs"][cell.run], t, x.base_lr * cell.lr_scale, train_set, val, test, x.pad_id,
                         len(x.labels), key, blocks)  # fmt: skip
    elif r.features != "tfidf":  # a sentence encoder's probe, or SetFit
        res = fit_encoder_baseline(r, w["bp"], cell.draw, train_set, *texts, w["embedded"])
    else:
        res = fit_baseline(w["bp"], train_set, *texts)
    seconds, cpu = round(time.perf_counter() - t1, 1), round(time.process_time() - c1, 1)
    res |= {"accuracy": accuracy(res["predictions"], x.test["label"]), "seed": cell.draw, "paraphrases": len(extra),
            "seconds": seconds, "cpu_seconds": cpu}  # fmt: skip
    write_json(res, path)
    print(f"{cell.name} at {cell.size} per class, draw {cell.draw}: test accuracy {res['accuracy']:.4f} "
          f"({res['seconds']} s)", flush=True)  # fmt: skip
    return str(path)


def fit_all(cells: list[Cell], workers: int, params: dict, paraphrases: dict) -> list[dict]:
    """Every cell's result, in order: fitted by `workers` processes (each with cores / workers torch threads), or
    in this process when workers is 1."""
    import os

    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        init_worker(threads, params, paraphrases)
        files = [fit_cell(c) for c in cells]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited torch thread pool
        with ProcessPoolExecutor(
            workers, ctx, initializer=init_worker, initargs=(threads, params, paraphrases)
        ) as pool:
            files = list(pool.map(fit_cell, cells))
    return [json.loads(Path(f).read_text()) for f in files]


def accuracy(predictions: list[int], references: list[int]) -> float:
    from specialist.scoring import accuracy as acc

    return round(acc(predictions, references), 4)


def back_translations(x: Inputs, rows: list[int]) -> tuple[dict, dict]:
    """The augment stage's paraphrases (its translators, gate and cache) of the pool verses `rows`:
    {verse key: [(text, input_ids, label)]}, and the gate's counts."""
    from transformers import AutoTokenizer

    from stages.augment import AugmentParams, paraphrase

    p = load_params("augment", AugmentParams)
    verses = [{k: x.pool[k][i] for k in ("text", "label", "book", "chapter", "verse")} for i in rows]
    kept, dropped, stats = paraphrase(verses, p)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    max_length = max(len(x.pool["input_ids"][i]) for i in rows)
    ids = tokenizer([c["text"] for c in kept], add_special_tokens=False, truncation=True, max_length=max_length)
    out = {}
    for c, seq in zip(kept, ids["input_ids"], strict=True):
        out.setdefault((c["book"], c["chapter"], c["verse"]), []).append((c["text"], seq, c["label"]))
    drops = {}
    for reason, _ in dropped:
        drops[reason] = drops.get(reason, 0) + 1
    translators = p.translators if isinstance(p.translators, str) else "the translators of augment.translators"
    return out, {"generated": stats["generated"], "kept": len(kept), "drops": dict(sorted(drops.items())),
                 "translators": translators}  # fmt: skip


def plan(p: StudyParams, runs: dict, baselines: dict, default: int) -> list[Cell]:
    """The study's cells: every run and baseline on every draw of every size (checkpoint runs and SetFit at
    checkpoint_sizes only); the augmented ones at the sizes study.augmented gives; forgetting_run at the other rates
    on the first forgetting_draws draws of the default size."""
    cells = []
    for n in sorted(p.draws):
        for d in range(p.draws[n]):
            bt = {r for r, sizes in p.augmented.items() if n in sizes}  # augmented at this size
            for name in [*p.runs, *(r for r, at in p.sized_runs.items() if n in at)]:
                ppl = name == p.forgetting_run and n == default and d < p.forgetting_draws
                cells.append(Cell(name, n, d, lr_scale=runs[name].lr_scale, perplexity=ppl))
                if name in bt:
                    cells.append(Cell(name, n, d, lr_scale=runs[name].lr_scale, augmented=True))
            for name in p.checkpoint_runs if n in p.checkpoint_sizes else []:
                cells.append(Cell(name, n, d, lr_scale=1.0))  # their own lr, as Inputs.base_lr
            for b in p.baselines:
                if baselines[b].setfit and n not in p.checkpoint_sizes:
                    continue
                cells.append(Cell(b, n, d, neural=False))
                if b in bt:
                    cells.append(Cell(b, n, d, neural=False, augmented=True))
    if default in p.draws and p.forgetting_run in p.runs:
        for scale in sorted(set(p.forgetting_lr_scales) - {runs[p.forgetting_run].lr_scale}):
            for d in range(min(p.forgetting_draws, p.draws[default])):
                cells.append(Cell(p.forgetting_run, default, d, lr_scale=scale, perplexity=True, main=False))
    return cells


def run(p: StudyParams) -> dict:
    from stages.baseline import BaselineParams, BaselineRunParams
    from stages.evaluate import EvaluateParams
    from stages.finetune import RunParams, TrainParams, build_classifier
    from stages.methods import count_params, weight_bytes

    start = time.perf_counter()
    t0 = load_params("finetune.train", TrainParams)
    ep = load_params("evaluate", EvaluateParams)
    runs = {name: section("finetune", name, RunParams) for name in {*p.runs, *p.sized_runs, p.forgetting_run}}
    if runs[p.forgetting_run].init != "pretrained":
        raise ParamsError(f"forgetting_run: {p.forgetting_run!r} must have init pretrained")
    if own := sorted(name for name, r in runs.items() if r.init == "checkpoint"):
        raise ParamsError(f"runs: {', '.join(own)} start from a checkpoint of their own; the study scales "
                          f"pre-training's rate and uses its tokenizer: list them in checkpoint_runs")  # fmt: skip
    runs |= checkpoint_runs(p)
    bp = load_params("baseline.train", BaselineParams)
    baselines = {b: section("baseline", b, BaselineRunParams) for b in p.baselines}
    t_own = from_dict(TrainParams, {**asdict(t0), **p.checkpoint_train}, "study.checkpoint_train")  # leaner stopping

    x = load_inputs()
    default = default_size()
    cells = plan(p, runs, baselines, default)
    drawn = sorted({i for c in cells if c.augmented for i in draw(x.pool["label"], c.size, c.draw)})
    paraphrases, translation = back_translations(x, drawn) if drawn else ({}, None)
    params = {"t0": t0, "t_own": t_own, "runs": runs, "bp": bp, "baselines": baselines}
    results = fit_all(cells, p.workers, params, paraphrases)
    by_cell: dict = {}  # (cell name, size) -> results in draw order
    forgetting_cells: dict = {}  # lr scale -> results in draw order
    for c, res in zip(cells, results, strict=True):
        if c.perplexity:
            forgetting_cells.setdefault(c.lr_scale, []).append(res)
        if c.main:
            by_cell.setdefault((c.name, c.size), []).append(res)

    shares, base_bytes = {}, {}
    for name in p.trained():
        model = build_classifier(runs[name], PRETRAINED, len(x.labels), t0)
        trainable, total = count_params(model)
        shares[name], base_bytes[name] = round(trainable / total, 5), weight_bytes(model.body)
    info = {name: {"init": r.init, "augmented": False, "method": r.method} for name, r in runs.items()
            if name in p.trained()}  # fmt: skip
    info |= {b: {"init": "none", "augmented": False, "method": baseline_method(baselines[b])} for b in p.baselines}
    info |= {f"{r}_bt": {**info[r], "augmented": True} for r in p.augmented}
    boot = Bootstrap(list(zip(x.test["book"], x.test["chapter"], strict=True)), ep.replicates, ep.seed)
    refs, k = x.test["label"], len(x.labels)
    sizes = sorted(p.draws)
    result = {
        "sizes": sizes, "draws": {str(n): p.draws[n] for n in sizes}, "default_size": default,
        "runs": p.trained(), "baselines": p.baselines, "pool": len(x.pool["label"]),
        "workers": p.workers,
        "test_examples": len(refs), "test_chapters": len(set(boot.ids.tolist())), "forgetting_run": p.forgetting_run,
        "interval": "95%, bootstrap over test chapters and labeled draws; gaps paired", "trainable_share": shares,
        "weight_bytes": base_bytes, "methods": {name: info[name]["method"] for name in p.trained()},
        "data_efficiency": {name: {str(n): cell_summary(by_cell[(name, n)], refs, boot, k) for n in sizes
                                   if (name, n) in by_cell} for name in [*p.trained(), *p.baselines]},
        "augmentation": {name: {str(n): {**cell_summary(by_cell[(f"{name}_bt", n)], refs, boot, k),
                                         "gain": gap(by_cell, (f"{name}_bt", n), (name, n), refs, boot),
                                         "paraphrases": statistics.fmean(r["paraphrases"]
                                                                         for r in by_cell[(f"{name}_bt", n)])}
                                for n in sizes if (f"{name}_bt", n) in by_cell}
                         for name, sizes in p.augmented.items()},
        "claims": size_claims(by_cell, info, sizes, refs, boot),
        "forgetting": forgetting(forgetting_cells, x, refs, boot, k) if len(forgetting_cells) > 1 else None,
        "translation": translation or ({"skipped": "no verse to back-translate"} if p.augmented else None),
        "cell_seconds": round(sum(r["seconds"] for r in results), 1),  # wall, summed over the workers' cells
        "cell_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in results), 1),  # what idle cores would need
        "cpu_seconds_by_cell": cpu_by_cell(cells, results),
    }  # fmt: skip
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["_predictions"] = {f"{r}@{n}": [c["predictions"] for c in v] for (r, n), v in by_cell.items()}
    return result


def cpu_by_cell(cells: list[Cell], results: list[dict]) -> dict:
    """CPU seconds per cell name and size, summed over draws: where the study's time goes."""
    out: dict = {}
    for c, r in zip(cells, results, strict=True):
        key = f"{c.name}@{c.size}" + ("" if c.main else f"x{c.lr_scale:g}")
        out[key] = round(out.get(key, 0.0) + r.get("cpu_seconds", 0.0), 1)
    return out


def checkpoint_runs(p: StudyParams) -> dict:
    """study.checkpoint_runs as RunParams (finetune.runs or extra_runs), each with init checkpoint and, for a local
    folder, under a dep of the study stage (DVC reruns the study when the folder changes)."""
    from stages.common import covered_by_deps
    from stages.finetune import PACKAGE, RunParams

    runs = {name: section("finetune", name, RunParams) for name in p.checkpoint_runs}
    for name, r in runs.items():
        if r.init != "checkpoint":
            raise ParamsError(f"checkpoint_runs: {name!r} has init {r.init}; list it in study.runs")
        local = not r.checkpoint.startswith(PACKAGE) and Path(r.checkpoint).exists()
        if local and not covered_by_deps(r.checkpoint, "study", STUDY_DVC):
            raise ParamsError(f"checkpoint_runs: {name}'s checkpoint {r.checkpoint} is not a dependency of the study "
                              f"stage; add it to its deps in {STUDY_DVC}")  # fmt: skip
    return runs


def baseline_method(r) -> str:
    """What a baseline run fits, as the claims tell baselines apart: tfidf_logreg, probe_logreg or setfit_logreg."""
    return "tfidf_logreg" if r.features == "tfidf" else "setfit_logreg" if r.setfit else "probe_logreg"


def forgetting(by_scale: dict, x: Inputs, refs: list[int], boot: Bootstrap, k: int) -> dict:
    from stages.finetune import load_body

    return {
        "perplexity_before": perplexity(load_body(PRETRAINED), PRETRAINED, x.blocks),
        "lr_scales": {f"{s:g}": {"perplexity": summary([round(r["perplexity"], 3) for r in v]),
                                 **cell_summary(v, refs, boot, k)} for s, v in sorted(by_scale.items())},
    }  # fmt: skip


def default_size() -> int:
    """The pipeline's own labeled verses per class (ingest.train_per_class): where forgetting is measured."""
    from datasets import load_from_disk

    train = load_from_disk(str(TASK))["train"]
    return len(train) // len(train.features["label"].names)


def plot(s: dict, out: Path) -> None:
    """data_efficiency.csv (for `dvc plots`) and data_efficiency.png: mean test accuracy by labeled-set size, with
    the 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*s["runs"], *s["baselines"]]
    de = s["data_efficiency"]
    rows = ["size," + ",".join(names)]
    for n in s["sizes"]:
        cells = [str(de[r][str(n)]["accuracy"]) if str(n) in de[r] else "" for r in names]
        rows.append(f"{n}," + ",".join(cells))
    out.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(rows) + "\n", out / "data_efficiency.csv")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in names:
        pts = [(n, de[r][str(n)]) for n in s["sizes"] if str(n) in de[r]]
        ys = [c["accuracy"] for _, c in pts]
        err = [[y - c["accuracy_ci95"][0] for y, (_, c) in zip(ys, pts, strict=True)],
               [c["accuracy_ci95"][1] - y for y, (_, c) in zip(ys, pts, strict=True)]]  # fmt: skip
        ax.errorbar([n for n, _ in pts], ys, yerr=err, marker="o", capsize=3, label=r,
                    linestyle="--" if r in s["baselines"] else "-")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(s["sizes"], [str(n) for n in s["sizes"]])
    ax.set_xlabel("labeled verses per class")
    ax.set_ylabel("test accuracy (mean over draws, 95% CI)")
    ax.set_title("Data efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out / ".data_efficiency.png.tmp"
    fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: the same numbers, the same bytes
    tmp.replace(out / "data_efficiency.png")
    plt.close(fig)


def write_predictions(predictions: dict, path: Path) -> None:
    """Every cell's test predictions, one JSON line per cell and draw (gzip, written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime 0: the same predictions, the same bytes
        for cell, draws in predictions.items():
            for d, preds in enumerate(draws):
                f.write((json.dumps({"cell": cell, "draw": d, "predictions": preds}) + "\n").encode())
    tmp.replace(path)


def main() -> None:
    p = load_params("study", StudyParams)
    try:
        s = run(p)
    except ParamsError as e:
        fail(f"params.yaml: study.{e}")
    write_predictions(s.pop("_predictions"), PREDICTIONS)
    write_json(s, METRICS)
    plot(s, PLOTS)
    write_text(report(s), REPORT)
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    print("\n".join(line(Claim(c["claim"], c["a"], c["b"], c["threshold"], c["kind"]), c, f" at {c['size']}")
                    for c in s["claims"]))  # fmt: skip


if __name__ == "__main__":
    main()
