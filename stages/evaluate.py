"""evaluate: every fine-tuning and baseline run on the held-out test verses, through the repo's metric modules.

Reads  models/7_finetune/<run>/predictions.jsonl for each run in finetune.runs (the predictions the finetune
       stage wrote and the predictions gate passed: reports/gates/predictions.json) and metrics/finetune/<run>.json,
       models/7_baseline/<run> and metrics/baseline/<run>.json for each run in baseline.runs,
       data/3_tokenize/task (test split: the reference labels, and the text the baselines read)
Writes metrics/evaluate.json  {"runs": {"<run>": {"accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95",
                              "per_class_f1", "trainable_params", "trainable_share", "train_seconds", ...}},
                              "claims": [{"claim", "a", "b", "gap", "ci95", "verdict", ...}]}; a baseline run adds
                              "chosen" (its hyperparameters, picked on validation)
       reports/evaluate.md    the table, and each claim decided by the interval of its gap (specialist.claims)
       reports/plots/confusion/<run>.csv  actual,predicted genre per verse of the split (`dvc plots`: a confusion
                              matrix per run)
       reports/plots/curves/<run>.csv     epoch,train_loss,val_accuracy of each fine-tuning run (`dvc plots`)

    python -m stages.evaluate

Intervals are a chapter bootstrap (specialist.scoring): the verses of a chapter are not independent. Run as a
module: as a script, this file would shadow the `evaluate` package. The metric modules live in metric_modules/
and are loaded by path (the Hugging Face hub is not needed).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from specialist.claims import Claim, applicable, line, verdict
from specialist.scoring import Bootstrap
from stages.common import atomic_dir, fail, load_params, write_json, write_text

TASK = Path("data/3_tokenize/task")
MODELS = Path("models/7_finetune")
FINETUNE_METRICS = Path("metrics/finetune")
BASELINES = Path("models/7_baseline")
BASELINE_METRICS = Path("metrics/baseline")
METRIC_MODULES = Path("metric_modules")
METRICS = Path("metrics/evaluate.json")
REPORT = Path("reports/evaluate.md")
PLOTS = Path("reports/plots")
PREDICTIONS = "predictions.jsonl"  # in each run's folder, written by stages.finetune.write_predictions
INTERVAL = "95%, chapter bootstrap (resample the test chapters, keep their verses), paired for gaps"


@dataclass(frozen=True)
class EvaluateParams:
    split: str  # the split scored: test (validation only while developing)
    replicates: int = 2000  # bootstrap replicates of the test chapters (intervals)
    seed: int = 0  # of the bootstrap
    max_class_share: float = 0.9  # a run predicting one class for more of the split than this is marked collapsed

    def validate(self):
        if self.split not in ("test", "validation"):
            yield f"split: expected test or validation, got {self.split!r}"
        if self.replicates < 100:
            yield f"replicates: at least 100 for a 95% interval, got {self.replicates}"
        if not 0 < self.max_class_share <= 1:
            yield f"max_class_share: must be in (0, 1], got {self.max_class_share}"


def score(predictions: list[int], references: list[int], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class F1 (by label name), from the repo-local metric modules."""
    import evaluate

    acc = evaluate.load(str(METRIC_MODULES / "accuracy")).compute(predictions=predictions, references=references)
    f1 = evaluate.load(str(METRIC_MODULES / "macro_f1")).compute(
        predictions=predictions, references=references, labels=list(range(len(labels)))
    )
    per_class = {labels[int(k)]: round(v, 4) for k, v in f1["per_class_f1"].items()}
    return {"accuracy": round(acc["accuracy"], 4), "macro_f1": round(f1["macro_f1"], 4), "per_class_f1": per_class}


def aligned(records: list[dict], split: str, keys: list[tuple]) -> list[int]:
    """The predicted labels of the split's verses, in the split's order; a verse without one fails.

    records predicting 3 for test Gen 1:2 and 5 for test Gen 1:1, keys [("Gen", 1, 1), ("Gen", 1, 2)] -> [5, 3]
    """
    by_key = {(r["book"], r["chapter"], r["verse"]): r["prediction"] for r in records if r["split"] == split}
    if missing := [k for k in keys if k not in by_key]:
        fail(f"{len(missing)} {split} verse(s) without a prediction, e.g. {missing[0]}; rerun `dvc repro`")
    return [by_key[k] for k in keys]


def collapse(predictions: list[int], labels: list[str], max_share: float) -> dict:
    """The most predicted class and its share of the split; `collapsed` when the share is above max_share (a run
    that learned one answer: a finding for the report, not a malformed artifact).

    [0, 0, 0, 1], ["a", "b"], 0.7 -> {"top_class": "a", "top_class_share": 0.75, "collapsed": True}
    """
    top = max(range(len(labels)), key=predictions.count)
    share = predictions.count(top) / len(predictions)
    return {"top_class": labels[top], "top_class_share": round(share, 4), "collapsed": share > max_share}


def claim_results(runs: dict, predictions: dict, refs: list[int], boot: Bootstrap) -> list[dict]:
    """Each applicable claim (specialist.claims) with its paired gap, 95% interval and verdict; a back-translation
    claim whose run trained on no paraphrase is `not measured`, with why."""
    out = []
    for c in applicable(runs):
        if c.a.endswith("_bt") and c.b == c.a[:-3] and runs[c.a]["train_examples"] == runs[c.b]["train_examples"]:
            why = f"{c.a} trained on no paraphrases (augment skipped or kept none: see metrics/augment.json)"
            out.append({"claim": c.text, "a": c.a, "b": c.b, "verdict": "not measured", "why": why})
            continue
        gap = boot.gap([predictions[c.a]], [predictions[c.b]], refs)
        out.append({"claim": c.text, "a": c.a, "b": c.b, "threshold": c.threshold, "kind": c.kind, **gap,
                    "verdict": verdict(c, gap["ci95"])})  # fmt: skip
    return out


def claim_lines(results: list[dict]) -> list[str]:
    return [f"- {r['claim']}: not measured, {r['why']}." if r["verdict"] == "not measured"
            else line(Claim(r["claim"], r["a"], r["b"], r["threshold"], r["kind"]), r) for r in results]  # fmt: skip


def task_line(labels: list[str], split: str, n: int, clusters: int) -> str:
    """What the table scores: the bundled task in its words, a user's by its labels."""
    from stages.ingest import LABELS

    if labels == LABELS:
        return (f"Verse -> genre of its book (7 classes), {n} {split} verses from {clusters} chapters no stage "
                "trained on. ")  # fmt: skip
    return f"Text -> label ({len(labels)} classes: {', '.join(labels)}), {n} held-out {split} examples. "


def collapsed_note(runs: dict, max_share: float) -> list[str]:
    names = [n for n, r in runs.items() if r.get("collapsed")]
    if not names:
        return []
    return [
        f"Collapsed (one class for more than {max_share:.0%} of the verses; still scored, and in the claims): "
        f"{', '.join(names)}. Its learning rate or epochs may not suit this task: see docs/own-data.md.",
        "",
    ]


def with_ci(value: float, ci: list[float]) -> str:
    """0.3721, [0.3302, 0.4133] -> '0.372 [0.330, 0.413]'."""
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def grams(chosen: dict) -> str:
    """A TF-IDF baseline's chosen n-gram range ("word n-grams 1-2, "); "" for an encoder's features (none)."""
    return f"word n-grams {'-'.join(map(str, chosen['ngram_range']))}, " if "ngram_range" in chosen else ""


def report(metrics: dict, labels: list[str]) -> str:
    runs, split, n = metrics["runs"], metrics["split"], metrics["examples"]
    head = "| run | init | method | augmented | accuracy [95% CI] | macro-F1 [95% CI] | trainable | share | train s |"
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        if r.get("collapsed"):
            name = f"{name} (collapsed: {r['top_class']} for {r['top_class_share']:.0%})"
        rows.append(f"| {name} | {r['init']} | {r['method']} | {r['augmented']} "
                    f"| {with_ci(r['accuracy'], r['accuracy_ci95'])} | {with_ci(r['macro_f1'], r['macro_f1_ci95'])} "
                    f"| {r['trainable_params']:,} | {r['trainable_share']:.2%} | {r['train_seconds']} |")  # fmt: skip
    chosen = [f"- {name}: C {r['chosen']['C']:g}, {grams(r['chosen'])}chosen on validation accuracy "
              f"({r['best_val_accuracy']:.4f}) from the grid in baseline.train"
              for name, r in runs.items() if "chosen" in r]  # fmt: skip
    if chosen:
        rows += ["", "Baseline hyperparameters:", "", *chosen]
    return "\n".join([
        "# Evaluation", "",
        task_line(labels, split, n, metrics["clusters"])
        + "Produced by `python -m stages.evaluate` (`dvc repro`); numbers from metrics/evaluate.json. "
        f"Intervals: {INTERVAL}.", "",
        *rows, "", *collapsed_note(runs, metrics["max_class_share"]),
        "## The field's claims, decided by the interval of the gap", "",
        "A claim holds where the whole 95% interval of the paired gap clears its threshold, does not hold where the "
        "whole interval misses it, and is not resolved where the interval straddles it.", "",
        *claim_lines(metrics["claims"]), "",
    ])  # fmt: skip


def run(p: EvaluateParams, run_names: list[str], task_dir: Path = TASK, models: Path = MODELS,
        metrics_path: Path = METRICS, report_path: Path = REPORT, baseline_names: list[str] | None = None,
        baselines: Path = BASELINES, finetune_metrics: Path = FINETUNE_METRICS,
        baseline_metrics: Path = BASELINE_METRICS, plots: Path = PLOTS) -> dict:  # fmt: skip
    from datasets import load_from_disk

    task = load_from_disk(str(task_dir))
    labels = task["train"].features["label"].names
    split = task[p.split]
    verses, refs = list(zip(split["book"], split["chapter"], split["verse"], strict=True)), list(split["label"])
    boot = Bootstrap([v[:2] for v in verses], replicates=p.replicates, seed=p.seed)  # clusters: chapters
    # each run's predictions, and the folder of its summary (metrics/<stage>/<run>.json, with the measurements)
    predictions = {}
    for name in run_names:
        records = [json.loads(line) for line in (models / name / PREDICTIONS).read_text().splitlines() if line.strip()]
        predictions[name] = (finetune_metrics, aligned(records, p.split, verses))
    for name in baseline_names or []:
        predictions[name] = (baseline_metrics, predict_baseline(baselines / name, split))
    runs = {}
    keys = ("init", "method", "augmented", "trainable_params", "trainable_share", "train_seconds",
            "peak_memory_mb", "train_examples", "best_val_accuracy")  # fmt: skip
    for name, (summaries, preds) in predictions.items():
        info = json.loads((summaries / f"{name}.json").read_text())
        chosen = {"chosen": info["chosen"]} if "chosen" in info else {}  # a baseline's hyperparameters
        scored = score(preds, refs, labels)
        ci = boot.summary([preds], refs, len(labels))
        scored |= {"accuracy_ci95": ci["accuracy_ci95"], "macro_f1_ci95": ci["macro_f1_ci95"]}
        scored |= collapse(preds, labels, p.max_class_share)
        runs[name] = {**scored, **{k: info[k] for k in keys}, **chosen}
        print(f"{name}: accuracy {with_ci(scored['accuracy'], scored['accuracy_ci95'])}  "
              f"macro-F1 {scored['macro_f1']:.4f}", flush=True)  # fmt: skip
    preds = {name: pr for name, (_, pr) in predictions.items()}
    metrics = {"split": p.split, "examples": len(refs), "clusters": len(set(boot.ids.tolist())), "interval": INTERVAL,
               "max_class_share": p.max_class_share, "runs": runs,
               "claims": claim_results(runs, preds, refs, boot)}  # fmt: skip
    with atomic_dir(plots) as tmp:
        for name, (_, preds) in predictions.items():
            write_text(confusion_csv(preds, refs, labels), tmp / "confusion" / f"{name}.csv")
        for name in run_names:
            curve = json.loads((models / name / "meta.json").read_text())["counts"]["curve"]
            write_text(curve_csv(curve), tmp / "curves" / f"{name}.csv")
    write_json(metrics, metrics_path)
    write_text(report(metrics, labels), report_path)
    return metrics


def confusion_csv(predictions: list[int], references: list[int], labels: list[str]) -> str:
    """One row per verse, for DVC's confusion template: [1], [0], ["a", "b"] -> "actual,predicted\\na,b\\n"."""
    rows = [f"{labels[a]},{labels[b]}" for a, b in zip(references, predictions, strict=True)]
    return "\n".join(["actual,predicted", *rows]) + "\n"


def curve_csv(curve: list[dict]) -> str:
    """A fine-tuning run's validation curve (meta.json counts.curve) as epoch,train_loss,val_accuracy rows."""
    rows = [f"{c['epoch']},{c['train_loss']:.6f},{c['val_accuracy']:.6f}" for c in curve]
    return "\n".join(["epoch,train_loss,val_accuracy", *rows]) + "\n"


def predict_baseline(path: Path, split) -> list[int]:
    """A baseline run's predictions for the split's raw verses (the same rows the fine-tuned models see)."""
    from stages.baseline import load_baseline

    return [int(y) for y in load_baseline(path).predict(list(split["text"]))]


def main() -> None:
    with open("params.yaml") as f:
        params = yaml.safe_load(f)
    run_names, baseline_names = list(params["finetune"]["runs"]), list(params["baseline"]["runs"])
    metrics = run(load_params("evaluate", EvaluateParams), run_names, baseline_names=baseline_names)
    print(Path(REPORT).read_text())
    return metrics


if __name__ == "__main__":
    main()
