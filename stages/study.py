"""study: the field's claims over seeds, labeled-set sizes and fine-tuning learning rates (outside `dvc repro`).

Reads  data/3_tokenize/task (train, validation, test and the pool of every training-chapter verse),
       data/3_tokenize/blocks (validation blocks: the pre-training objective), models/4_pretrain,
       data/6_augment (the back-translated paraphrases of the train split)
Writes metrics/study.json              every measurement: per run, size and seed, and means
       reports/study.md                the claims, each stated as measured, with the tables behind them
       reports/study/data_efficiency.csv   test accuracy (mean over seeds) per labeled-set size: `dvc plots`
       reports/study/data_efficiency.png   the same, drawn

    dvc repro study/dvc.yaml      # or: python -m stages.study

Three measurements, each a mean over `study.seeds` (the seed draws the labeled subset and seeds training):
- data efficiency: test accuracy of `study.runs` (finetune.runs keys) and `study.baseline` (a baseline.runs key)
  with `study.sizes` labeled verses per class. Subsets are nested: a size up to ingest.train_per_class draws from
  the pipeline's own train split (so its paraphrases exist and that size *is* the train split); a larger one adds
  verses from the rest of the training chapters' pool.
- back-translation: `study.augmented_runs` plus their paraphrases (data/6_augment) at the smallest size.
- forgetting: `study.forgetting_run` at the default size at each of `study.forgetting_lr_scales`, and the
  validation perplexity of the pre-training objective (causal LM, tied output layer) on its fine-tuned body.
Early stopping, the baseline's C and n-grams: on the validation split. The test split is only scored.
"""

import json
import math
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from stages.common import ParamsError, fail, load_params, seed_everything, write_json, write_text

TASK = Path("data/3_tokenize/task")
BLOCKS = Path("data/3_tokenize/blocks")
TOKENIZER = Path("data/3_tokenize/tokenizer")
PRETRAINED = Path("models/4_pretrain")
AUGMENT = Path("data/6_augment")
TRANSLATE_METRICS = Path("metrics/translate.json")  # the translators' quality and the paraphrase filter's statistics:
AUGMENT_METRICS = Path("metrics/augment.json")  # quoted beside the back-translation results, which they explain
METRICS = Path("metrics/study.json")
REPORT = Path("reports/study.md")
PLOTS = Path("reports/study")
CHECKPOINTS = Path("checkpoints/study")  # finished cells (<key>.json) and the running one's epochs: a killed study
# resumes where it was; removed when the study has written its results


@dataclass(frozen=True)
class StudyParams:
    sizes: list[int]  # labeled verses per class
    seeds: list[int]  # each draws the labeled subset and seeds training
    runs: list[str]  # finetune.runs keys trained at every size
    baseline: str  # a baseline.runs key (not augmented) fitted at every size
    augmented_runs: list[str]  # of runs + baseline: also trained with the paraphrases at the smallest size (<run>_bt)
    forgetting_run: str  # a finetune.runs key with init pretrained
    forgetting_lr_scales: list[float]  # its learning rate, as a multiple of pre-training's

    def validate(self):
        if not self.sizes or min(self.sizes) < 1:
            yield f"sizes: labeled verses per class, each >= 1, got {self.sizes}"
        if not self.seeds:
            yield "seeds: at least one seed"
        if unknown := [r for r in self.augmented_runs if r not in [*self.runs, self.baseline]]:
            yield f"augmented_runs: {unknown} are not in study.runs or study.baseline"
        if any(s <= 0 for s in self.forgetting_lr_scales):
            yield f"forgetting_lr_scales: each > 0, got {self.forgetting_lr_scales}"


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: subsets, summaries, claims, report


def draw(keys: list[tuple], labels: list[int], train: set[tuple], n: int, seed: int) -> list[int]:
    """Indices of n examples per class: the class's `train` keys first, then the rest, each in a seeded order.

    Nested: draw(..., n, s) is a prefix (per class) of draw(..., m, s) for m > n; n = |train per class| gives train.
    """
    picked = []
    for label in sorted(set(labels)):
        rng = random.Random(f"{seed}/{label}")
        own = [i for i, (k, y) in enumerate(zip(keys, labels, strict=True)) if y == label and k in train]
        rest = [i for i, (k, y) in enumerate(zip(keys, labels, strict=True)) if y == label and k not in train]
        rng.shuffle(own)
        rng.shuffle(rest)
        picked += (own + rest)[:n]
    return sorted(picked)


def summary(values: list[float]) -> dict:
    """{"mean", "std", "values"} (std 0 for one value); [0.5, 0.7] -> mean 0.6, std 0.1414."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "values": values}


def mean(results: dict, run: str, size: int) -> float | None:
    cell = results.get(run, {}).get(str(size))
    return cell["accuracy"]["mean"] * 100 if cell else None


def claims(s: dict) -> list[str]:
    """Each claim of the field, as measured here (means over seeds, accuracy in points)."""
    de, sizes, default = s["data_efficiency"], s["sizes"], s["default_size"]
    n_seeds = len(s["seeds"])
    lines = []
    full, scratch, lora = (mean(de, r, default) for r in ("full", "scratch", "lora"))
    if full is not None and scratch is not None:
        gap = full - scratch
        lines.append(f"- Pre-training then fine-tuning beats training from scratch by >= 15 points at {default} "
                     f"labels per class: {'holds' if gap >= 15 else 'does NOT hold'} (full {full:.1f}% vs scratch "
                     f"{scratch:.1f}%, {gap:+.1f} points, mean of {n_seeds} seeds). Pre-training beats scratch at "
                     f"all: {'yes' if gap > 0 else 'no'}.")  # fmt: skip
    if full is not None and lora is not None:
        gap, share = lora - full, s["trainable_share"].get("lora", 0) * 100
        ok = gap >= -2 and share <= 5
        lines.append(f"- LoRA within 2 points of full fine-tuning with <= 5% of the parameters: "
                     f"{'holds' if ok else 'does NOT hold'} (lora {lora:.1f}% vs full {full:.1f}%, {gap:+.1f} points, "
                     f"{share:.2f}% of the parameters trained).")  # fmt: skip
    if f := s.get("forgetting"):
        by = sorted((float(k), v["perplexity"]["mean"]) for k, v in f["lr_scales"].items())  # ascending rate
        if len(by) > 1:  # grows at every step up, and clearly (> 5%) from the second-highest rate to the highest
            ok = all(a[1] < b[1] for a, b in zip(by, by[1:], strict=False)) and by[-1][1] > 1.05 * by[-2][1]
            row = ", ".join(f"{k:g}x {v:.1f}" for k, v in by)
            verdict = "holds" if ok else "does NOT hold"
            lines.append(f"- Forgetting grows with the fine-tuning learning rate: {verdict} (validation perplexity "
                         f"of the pre-training objective {f['perplexity_before']:.1f} before fine-tuning; after "
                         f"{s['forgetting_run']} at {row} of pre-training's rate).")  # fmt: skip
    for n in sizes:  # full with n labels vs scratch with >= 8n
        fn = mean(de, "full", n)
        if fn is None or mean(de, "scratch", n) is None:
            continue
        caught = [m for m in sizes if m >= n and (mean(de, "scratch", m) or 0) >= fn]
        measured = [m for m in sizes if m >= 8 * n]
        if caught:
            verdict = "holds" if caught[0] >= 8 * n else "does NOT hold"
            detail = f"scratch first reaches full's {fn:.1f}% at {caught[0]} per class ({caught[0] // n}x the labels)"
        elif measured:
            verdict, detail = "holds", f"scratch stays below full's {fn:.1f}% up to {sizes[-1]} per class"
        else:
            verdict = "not measured"
            detail = f"scratch stays below full's {fn:.1f}% up to {sizes[-1]} per class, under 8x"
        lines.append(f"- Data efficiency, full with {n} labels per class matches scratch with >= {8 * n}: "
                     f"{verdict} ({detail}).")  # fmt: skip
    base = s["baseline"]
    for n in sizes:
        b = mean(de, base, n)
        pre = [(r, mean(de, r, n)) for r in s["runs"] if s["init"].get(r) == "pretrained" and mean(de, r, n)]
        if b is None or not pre:
            continue
        beat = [r for r, a in pre if a > b]
        vs = ", ".join(f"{r} {a:.1f}%" for r, a in pre)
        lines.append(f"- At {n} labels per class, pre-trained runs beat {base} ({b:.1f}%): "
                     f"{'all' if len(beat) == len(pre) else ', '.join(beat) if beat else 'none'} ({vs}).")  # fmt: skip
    if s.get("augmentation"):
        n = sizes[0]
        for run, cell in s["augmentation"].items():
            with_bt, without = cell["accuracy"]["mean"] * 100, mean(de, run, n)
            gap = with_bt - without
            lines.append(f"- Back-translation helps at {n} labels per class ({run}_bt vs {run}): "
                         f"{'holds' if gap > 0 else 'does NOT hold'} ({with_bt:.1f}% vs {without:.1f}%, "
                         f"{gap:+.1f} points, mean of {n_seeds} seeds; +2 targeted: "
                         f"{'reached' if gap >= 2 else 'not reached'}).")  # fmt: skip
    return lines


def report(s: dict) -> str:
    sizes, de = s["sizes"], s["data_efficiency"]
    runs = [*s["runs"], s["baseline"]]
    table = ["| run | " + " | ".join(f"{n} / class" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for r in runs:
        cells = [de[r].get(str(n)) for n in sizes]
        shown = [f"{c['accuracy']['mean']:.3f} ± {c['accuracy']['std']:.3f}" if c else "-" for c in cells]
        table.append(f"| {r} | " + " | ".join(shown) + " |")
    lines = [
        "# Study: the field's claims over seeds, labeled-set sizes and learning rates", "",
        f"Produced by `dvc repro study/dvc.yaml` (`python -m stages.study`) in {s['seconds'] / 60:.1f} min; every "
        f"number from metrics/study.json. Test accuracy on {s['test_examples']} test verses, mean ± std over seeds "
        f"{s['seeds']}; each seed draws its own labeled subset and seeds training. Early stopping and the baseline's "
        "hyperparameters use the validation split only.", "",
        "## The claims, as measured", "", *claims(s), "",
        "## Data efficiency: test accuracy by labeled verses per class", "", *table, "",
        "![data efficiency](study/data_efficiency.png)", "",
    ]  # fmt: skip
    if aug := s.get("augmentation"):
        lines += [f"## Back-translation at {sizes[0]} labels per class", "",
                  "| run | without | with paraphrases | gain (points) | paraphrases added (mean) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r, c in aug.items():
            base = de[r][str(sizes[0])]["accuracy"]["mean"]
            lines.append(f"| {r} | {base:.3f} | {c['accuracy']['mean']:.3f} ± {c['accuracy']['std']:.3f} "
                         f"| {(c['accuracy']['mean'] - base) * 100:+.1f} | {c['paraphrases']:.0f} |")  # fmt: skip
        if (q := s.get("translation")) and "skipped" in q:
            lines += ["", f"Back-translation was not measured: {q['skipped']}."]
        elif q:
            drops = ", ".join(f"{k} {v}" for k, v in q["drops"].items())
            lines += ["", f"Why, in numbers: the translators score BLEU {q['bleu_en_es']} en->es and "
                      f"{q['bleu_es_en']} es->en, round-trip chrF {q['round_trip_chrf']} ({TRANSLATE_METRICS}); the "
                      f"quality filter kept {q['kept']} of {q['generated']} paraphrases, dropping {drops} "
                      f"({AUGMENT_METRICS}). Kept and dropped pairs: data/6_augment/samples.jsonl."]  # fmt: skip
            if (fl := q.get("fluency")) and "skipped" not in fl:
                lines[-1] += (f" Median perplexity under the fluency model: source verses {fl['source_median']}, "
                              f"kept paraphrases {fl['kept_median']}, dropped {fl['dropped_median']}.")  # fmt: skip
        lines.append("")
    if f := s.get("forgetting"):
        lines += [f"## Forgetting: {s['forgetting_run']} at {s['default_size']} labels per class", "",
                  f"Validation perplexity of the pre-training objective: {f['perplexity_before']:.2f} before "
                  "fine-tuning.", "",
                  "| learning rate (x pre-training's) | perplexity after | test accuracy |",
                  "|---|---|---|"]  # fmt: skip
        for k, v in sorted(f["lr_scales"].items(), key=lambda kv: -float(kv[0])):
            lines.append(f"| {float(k):g} | {v['perplexity']['mean']:.2f} ± {v['perplexity']['std']:.2f} "
                         f"| {v['accuracy']['mean']:.3f} ± {v['accuracy']['std']:.3f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


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


def fit_neural(run, t, lr: float, train_set, val_set, test_set, pad_id: int, labels: list[str], fp: str,
               blocks=None) -> dict:  # fmt: skip
    """One fine-tuning run (stages.finetune's model and loop, resumable from CHECKPOINTS/train); test scores, and
    perplexity when `blocks` is given."""
    from stages.evaluate import score
    from stages.finetune import build_classifier, predict, train
    from stages.training import remove_checkpoint

    seed_everything(t.seed)
    model = build_classifier(run, PRETRAINED, len(labels), t)
    best, curve = train(model, train_set, val_set, lr, t, pad_id, CHECKPOINTS / "train", fp)
    model.load_state_dict(best, strict=False)  # the best trainable tensors; the frozen ones never moved
    remove_checkpoint(CHECKPOINTS / "train")
    out = score(predict(model, test_set[0], pad_id, t.eval_batch_size), test_set[1], labels)
    out["best_epoch"] = max(curve, key=lambda c: c["val_accuracy"])["epoch"]
    if blocks is not None:
        out["perplexity"] = perplexity(model.cpu().body, PRETRAINED, blocks)
    return out


def fit_baseline(bp, train_set, val_set, test_set, labels: list[str]) -> dict:
    from stages.baseline import search
    from stages.evaluate import score

    pipe, chosen, _ = search(train_set, val_set, bp)
    return {**score(pipe.predict(test_set[0]).tolist(), test_set[1], labels), "chosen": chosen}


def columns(ds, *names) -> list[list]:
    return [list(ds[n]) for n in names]


def run(p: StudyParams) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from stages.baseline import BaselineParams, BaselineRunParams
    from stages.finetune import RunParams, TrainParams, build_classifier, load_body, recorded
    from stages.training import count_params, fingerprint

    start = time.perf_counter()
    t0 = load_params("finetune.train", TrainParams)
    runs = {name: load_params(f"finetune.runs.{name}", RunParams) for name in {*p.runs, p.forgetting_run}}
    if runs[p.forgetting_run].init != "pretrained":
        raise ParamsError(f"forgetting_run: {p.forgetting_run!r} must have init pretrained")
    if own := sorted(name for name, r in runs.items() if r.init == "checkpoint"):
        raise ParamsError(f"runs: {', '.join(own)} start from a checkpoint of their own; the study scales "
                          f"pre-training's rate and uses its tokenizer: scratch and pretrained runs only")  # fmt: skip
    bp = load_params("baseline.train", BaselineParams)
    load_params(f"baseline.runs.{p.baseline}", BaselineRunParams)
    base_lr = json.loads((PRETRAINED / "meta.json").read_text())["params"]["lr"]
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    pad_id = tokenizer.pad_token_id

    task = load_from_disk(str(TASK))
    labels = task["train"].features["label"].names
    keys = list(zip(*columns(task["pool"], "book", "chapter", "verse"), strict=True))
    pool_ids, pool_texts, pool_labels = columns(task["pool"], "input_ids", "text", "label")
    train_keys = set(zip(*columns(task["train"], "book", "chapter", "verse"), strict=True))
    default = len(task["train"]) // len(labels)
    val_ids, val_texts, val_labels = columns(task["validation"], "input_ids", "text", "label")
    test_ids, test_texts, test_labels = columns(task["test"], "input_ids", "text", "label")
    blocks = torch.tensor(load_from_disk(str(BLOCKS))["validation"]["input_ids"], dtype=torch.long)
    paraphrases = {}  # verse key -> [(text, input_ids, label)] of its back-translations
    if p.augmented_runs and len(aug := load_from_disk(str(AUGMENT))):
        max_length = max(len(s) for s in task["train"]["input_ids"])
        ids = tokenizer(list(aug["text"]), add_special_tokens=False, truncation=True, max_length=max_length)
        aug_keys = zip(*columns(aug, "book", "chapter", "verse"), strict=True)
        for k, text, seq, y in zip(aug_keys, aug["text"], ids["input_ids"], aug["label"], strict=True):
            paraphrases.setdefault(k, []).append((text, seq, y))

    inputs = fingerprint({}, TASK, TOKENIZER, PRETRAINED, AUGMENT, BLOCKS)

    def cached(what: dict, fit) -> dict:
        """fit()'s result, or the one a killed study already finished for the same `what` and inputs."""
        key = fingerprint({**what, "inputs": inputs})
        path = CHECKPOINTS / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        t1 = time.perf_counter()
        res = {**fit(key), "seed": what["seed"], "seconds": 0.0}
        res["seconds"] = round(time.perf_counter() - t1, 1)
        write_json(res, path)
        return res

    def neural(name, t, scale, idx, extra=(), ppl=False):
        train_set = (
            [pool_ids[i] for i in idx] + [r[1] for r in extra],
            [pool_labels[i] for i in idx] + [r[2] for r in extra],
        )
        what = {"run": recorded(runs[name]), "train": asdict(t), "lr_scale": scale, "seed": t.seed,
                "train_set": train_set, "perplexity": ppl}  # fmt: skip
        return cached(what, lambda fp: fit_neural(
            runs[name], t, base_lr * scale, train_set, (val_ids, val_labels), (test_ids, test_labels), pad_id, labels,
            fp, blocks if ppl else None))  # fmt: skip

    def baseline(idx, seed, extra=()):
        train_set = (
            [pool_texts[i] for i in idx] + [r[0] for r in extra],
            [pool_labels[i] for i in idx] + [r[2] for r in extra],
        )
        what = {"baseline": asdict(bp), "seed": seed, "train_set": train_set}
        return cached(
            what, lambda _: fit_baseline(bp, train_set, (val_texts, val_labels), (test_texts, test_labels), labels)
        )

    cells: dict = {}  # (run, size) -> [result per seed]
    sizes = sorted(set(p.sizes))
    for size in sizes:
        for seed in p.seeds:
            t = replace(t0, seed=seed)
            idx = draw(keys, pool_labels, train_keys, size, seed)
            extra = [row for i in idx for row in paraphrases.get(keys[i], [])] if size == sizes[0] else []
            for name in p.runs:
                ppl = name == p.forgetting_run and size == default
                cells.setdefault((name, size), []).append(neural(name, t, runs[name].lr_scale, idx, ppl=ppl))
                if extra and name in p.augmented_runs:
                    res = neural(name, t, runs[name].lr_scale, idx, extra)
                    cells.setdefault((f"{name}_bt", size), []).append({**res, "paraphrases": len(extra)})
            cells.setdefault((p.baseline, size), []).append(baseline(idx, seed))
            if extra and p.baseline in p.augmented_runs:
                res = baseline(idx, seed, extra)
                cells.setdefault((f"{p.baseline}_bt", size), []).append({**res, "paraphrases": len(extra)})
            done = {f"{r}@{n}": round(v[-1]["accuracy"], 4) for (r, n), v in cells.items() if n == size}
            print(f"size {size} seed {seed}: test accuracy {done}", flush=True)

    forgetting = None
    if default in sizes and p.forgetting_run in p.runs and p.forgetting_lr_scales:
        fr = runs[p.forgetting_run]
        scales = {fr.lr_scale: cells[(p.forgetting_run, default)]}
        for scale in sorted(set(p.forgetting_lr_scales) - {fr.lr_scale}):
            for seed in p.seeds:
                idx = draw(keys, pool_labels, train_keys, default, seed)  # the train split
                res = neural(p.forgetting_run, replace(t0, seed=seed), scale, idx, ppl=True)
                scales.setdefault(scale, []).append(res)
                print(f"forgetting {scale:g}x seed {seed}: perplexity {res['perplexity']:.2f}", flush=True)
        forgetting = {
            "perplexity_before": perplexity(load_body(PRETRAINED), PRETRAINED, blocks),
            "lr_scales": {f"{k:g}": {"perplexity": summary([round(r["perplexity"], 3) for r in v]),
                                     "accuracy": summary([r["accuracy"] for r in v])}
                          for k, v in sorted(scales.items())},
        }  # fmt: skip
    elif p.forgetting_lr_scales:
        print(f"forgetting: skipped, needs {p.forgetting_run} in study.runs and {default} in study.sizes")

    def cell(rs):
        return {"accuracy": summary([r["accuracy"] for r in rs]), "macro_f1": summary([r["macro_f1"] for r in rs]),
                "seeds": rs}  # fmt: skip

    shares = {}
    for name in p.runs:
        trainable, total = count_params(build_classifier(runs[name], PRETRAINED, len(labels), t0))
        shares[name] = round(trainable / total, 5)
    bt_cells = {r: cells[(f"{r}_bt", sizes[0])] for r in p.augmented_runs if (f"{r}_bt", sizes[0]) in cells}
    result = {
        "sizes": sizes, "seeds": p.seeds, "default_size": default, "runs": p.runs, "baseline": p.baseline,
        "test_examples": len(test_labels), "forgetting_run": p.forgetting_run, "trainable_share": shares,
        "init": {name: r.init for name, r in runs.items()},
        "data_efficiency": {name: {str(n): cell(cells[(name, n)]) for n in sizes if (name, n) in cells}
                            for name in [*p.runs, p.baseline]},
        "augmentation": {name: {**cell(rs), "paraphrases": statistics.fmean(r["paraphrases"] for r in rs)}
                         for name, rs in bt_cells.items()},
        "forgetting": forgetting,
        "translation": translation_quality() if bt_cells else None,
    }  # fmt: skip
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["claims"] = claims(result)
    return result


def translation_quality() -> dict | None:
    """What explains back-translation's effect: translator BLEU/chrF and the paraphrase filter's counts."""
    if not (TRANSLATE_METRICS.exists() and AUGMENT_METRICS.exists()):
        return None
    t, a = json.loads(TRANSLATE_METRICS.read_text()), json.loads(AUGMENT_METRICS.read_text())
    if skipped := a.get("skipped") or t.get("skipped"):  # no parallel corpus: nothing was back-translated
        return {"skipped": skipped}
    return {"bleu_en_es": t["en-es"]["bleu"], "bleu_es_en": t["es-en"]["bleu"],
            "round_trip_chrf": t["round_trip_chrf"], "generated": a["generated"], "kept": a["kept"],
            "drops": a["drops"], **({"fluency": a["fluency"]} if "fluency" in a else {})}  # fmt: skip


def plot(s: dict, out: Path) -> None:
    """data_efficiency.csv (for `dvc plots`) and data_efficiency.png: mean test accuracy by labeled-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*s["runs"], s["baseline"]]
    de = s["data_efficiency"]
    rows = ["size," + ",".join(names)]
    for n in s["sizes"]:
        cells = [str(de[r][str(n)]["accuracy"]["mean"]) if str(n) in de[r] else "" for r in names]
        rows.append(f"{n}," + ",".join(cells))
    out.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(rows) + "\n", out / "data_efficiency.csv")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in names:
        pts = [(n, de[r][str(n)]["accuracy"]) for n in s["sizes"] if str(n) in de[r]]
        ax.errorbar([n for n, _ in pts], [a["mean"] for _, a in pts], yerr=[a["std"] for _, a in pts], marker="o",
                    capsize=3, label=r, linestyle="--" if r == s["baseline"] else "-")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(s["sizes"], [str(n) for n in s["sizes"]])
    ax.set_xlabel("labeled verses per class")
    ax.set_ylabel(f"test accuracy (mean of {len(s['seeds'])} seeds)")
    ax.set_title("Data efficiency: verse -> genre, 7 classes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out / ".data_efficiency.png.tmp"
    fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: the same numbers, the same bytes
    tmp.replace(out / "data_efficiency.png")
    plt.close(fig)


def main() -> None:
    p = load_params("study", StudyParams)
    try:
        s = run(p)
    except ParamsError as e:
        fail(f"params.yaml: study.{e}")
    write_json(s, METRICS)
    plot(s, PLOTS)
    write_text(report(s), REPORT)
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    print("\n".join(s["claims"]))


if __name__ == "__main__":
    main()
