"""evaluate: every fine-tuning run on the held-out test verses, through the repo's `evaluate` metric modules.

Reads  models/7_finetune/<run>/{predictions.jsonl,meta.json} for each run in finetune.runs (the predictions the
       finetune stage wrote and the predictions gate passed: reports/gates/predictions.json),
       data/3_tokenize/task (test split: the reference labels)
Writes metrics/evaluate.json  {"runs": {"<run>": {"accuracy", "macro_f1", "per_class_f1", "trainable_params",
                              "trainable_share", "train_seconds", ...}}}
       reports/evaluate.md    the table, and each claim of the field stated as measured

    python -m stages.evaluate

Run as a module: as a script, this file would shadow the `evaluate` package. The metric modules live in
metric_modules/ and are loaded by path (the Hugging Face hub is not needed).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from stages.common import fail, load_params, write_json, write_text

TASK = Path("data/3_tokenize/task")
MODELS = Path("models/7_finetune")
METRIC_MODULES = Path("metric_modules")
METRICS = Path("metrics/evaluate.json")
REPORT = Path("reports/evaluate.md")
PREDICTIONS = "predictions.jsonl"  # in each run's folder, written by stages.finetune.write_predictions


@dataclass(frozen=True)
class EvaluateParams:
    split: str  # the split scored: test (validation only while developing)

    def validate(self):
        if self.split not in ("test", "validation"):
            yield f"split: expected test or validation, got {self.split!r}"


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


def claims(runs: dict) -> list[str]:
    """The field's claims, each stated as measured (or as not measurable with the runs present)."""

    def acc(name):
        return runs[name]["accuracy"] * 100 if name in runs else None

    lines = []
    if acc("full") is not None and acc("scratch") is not None:
        gap = acc("full") - acc("scratch")
        verdict = "holds" if gap > 0 else "does NOT hold"
        lines.append(f"- Pre-training then fine-tuning beats training from scratch with few labels: {verdict} "
                     f"(full {acc('full'):.1f}% vs scratch {acc('scratch'):.1f}%, {gap:+.1f} points).")  # fmt: skip
    if acc("lora") is not None and acc("full") is not None:
        gap = acc("lora") - acc("full")
        share = runs["lora"]["trainable_share"] * 100
        verdict = "holds" if gap >= -2 else "does NOT hold"
        lines.append(f"- LoRA comes within 2 points of full fine-tuning with a fraction of the parameters: {verdict} "
                     f"(lora {acc('lora'):.1f}% vs full {acc('full'):.1f}%, {gap:+.1f} points, "
                     f"training {share:.2f}% of the parameters).")  # fmt: skip
    for name in runs:
        if name.endswith("_bt") and acc(name[:-3]) is not None:
            gap = acc(name) - acc(name[:-3])
            verdict = "holds" if gap > 0 else "does NOT hold"
            lines.append(f"- Back-translation helps when labels are scarce ({name} vs {name[:-3]}): {verdict} "
                         f"({acc(name):.1f}% vs {acc(name[:-3]):.1f}%, {gap:+.1f} points).")  # fmt: skip
    return lines


def report(runs: dict, split: str, n: int) -> str:
    head = "| run | init | method | augmented | accuracy | macro-F1 | trainable params | share | train s |"
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {r['init']} | {r['method']} | {r['augmented']} | {r['accuracy']:.4f} "
                    f"| {r['macro_f1']:.4f} | {r['trainable_params']:,} | {r['trainable_share']:.2%} "
                    f"| {r['train_seconds']} |")  # fmt: skip
    return "\n".join([
        "# Evaluation", "",
        f"Verse -> genre of its book (7 classes), {n} {split} verses from chapters no stage trained on. "
        "Produced by `python -m stages.evaluate` (`dvc repro`); numbers from metrics/evaluate.json.", "",
        *rows, "", "## The field's claims, as measured", "", *claims(runs), "",
    ])  # fmt: skip


def run(p: EvaluateParams, run_names: list[str], task_dir: Path = TASK, models: Path = MODELS,
        metrics_path: Path = METRICS, report_path: Path = REPORT) -> dict:  # fmt: skip
    from datasets import load_from_disk

    task = load_from_disk(str(task_dir))
    labels = task["train"].features["label"].names
    split = task[p.split]
    verses, refs = list(zip(split["book"], split["chapter"], split["verse"], strict=True)), list(split["label"])
    runs = {}
    for name in run_names:
        path = models / name
        info = json.loads((path / "meta.json").read_text())["counts"]
        records = [json.loads(line) for line in (path / PREDICTIONS).read_text().splitlines() if line.strip()]
        preds = aligned(records, p.split, verses)
        keys = ("init", "method", "augmented", "trainable_params", "trainable_share", "train_seconds",
                "peak_memory_mb", "train_examples", "best_val_accuracy")  # fmt: skip
        runs[name] = {**score(preds, refs, labels), **{k: info[k] for k in keys}}
        print(f"{name}: accuracy {runs[name]['accuracy']:.4f}  macro-F1 {runs[name]['macro_f1']:.4f}", flush=True)
    metrics = {"split": p.split, "examples": len(refs), "runs": runs}
    write_json(metrics, metrics_path)
    write_text(report(runs, p.split, len(refs)), report_path)
    return metrics


def main() -> None:
    with open("params.yaml") as f:
        run_names = list(yaml.safe_load(f)["finetune"]["runs"])
    metrics = run(load_params("evaluate", EvaluateParams), run_names)
    print(Path(REPORT).read_text())
    return metrics


if __name__ == "__main__":
    main()
