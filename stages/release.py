"""release: the fine-tuning run with the best VALIDATION accuracy, as models/release, with its complete model card.

Reads  metrics/finetune/<run>.json (best_val_accuracy, trainable parameters) of every run in finetune.runs (or
       release.runs), models/7_finetune/<run>, metrics/evaluate.json (test accuracy and macro-F1 with their 95%
       intervals), metrics/ingest.json and metrics/tokenize.json (data sizes); dvc.lock (the hashes of the run's
       inputs, as `dvc repro` recorded them) and git (the revision)
Writes models/release            the chosen run's folder (standard or PEFT; a PEFT base path recorded as
                                 models/release/base), README.md (the model card with test scores and provenance),
                                 example/input.txt and example/predictions.jsonl (what `python -m stages.predict
                                 models/release/example/input.txt` writes for it)
       metrics/release.json      the run chosen and every candidate's validation accuracy

    python -m stages.release
    hf upload <you>/specialist-verse-genre models/release .   # publish (huggingface-cli upload before hub 1.0);
                                                              # not run here: the pipeline is offline

The choice never looks at test scores: the test set stays an honest estimate of the released model. Ties go to the
run with fewer trainable parameters, then to the name. Baselines (TF-IDF, the MiniLM probe, SetFit) are not
candidates: they are scikit-learn pipelines, not transformers models the Auto classes load; the card reports the
best baseline's test accuracy beside the model's, so a reader sees the bar it is measured against.
"""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from specialist.card import card, check
from stages.common import atomic_dir, fail, load_params, write_json

MODELS = Path("models/7_finetune")
FINETUNE_METRICS = Path("metrics/finetune")
EVALUATE = Path("metrics/evaluate.json")
INGEST = Path("metrics/ingest.json")
TOKENIZE = Path("metrics/tokenize.json")
DVC_LOCK = Path("dvc.lock")
OUT = Path("models/release")
METRICS = Path("metrics/release.json")
DROPPED = ("predictions.jsonl",)  # the pipeline's per-verse record, not part of the model


@dataclass(frozen=True)
class ReleaseParams:
    runs: list[str]  # candidates (finetune.runs keys); [] = every run of finetune.runs
    examples: list[str]  # texts of the predict example shipped in models/release/example/

    def validate(self):
        if not self.examples:
            yield "examples: give at least one text for the predict example"


def choose(candidates: dict[str, dict]) -> str:
    """The run with the best validation accuracy; ties to fewer trainable parameters, then the name.

    {"a": {"best_val_accuracy": 0.4, "trainable_params": 9}, "b": {"best_val_accuracy": 0.4, "trainable_params": 5}}
    -> "b"
    """
    return min(candidates, key=lambda n: (-candidates[n]["best_val_accuracy"], candidates[n]["trainable_params"], n))


def lock_hashes(stage: str, dvc_lock: Path = DVC_LOCK) -> dict[str, str]:
    """{path: md5} of a stage's deps and outs in dvc.lock; {} when it has none (a stage run outside dvc repro).
    Metrics files are left out: they hold the run's seconds, so the same commit would release a different card."""
    if not dvc_lock.exists():
        return {}
    entry = (yaml.safe_load(dvc_lock.read_text()) or {}).get("stages", {}).get(stage, {})
    files = [*entry.get("deps", []), *entry.get("outs", [])]
    return {d["path"]: d.get("md5") or d.get("hash", "") for d in files if not d["path"].startswith("metrics/")}


def git_revision() -> str:
    """HEAD's commit, or 'unknown' outside a git checkout."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def release_facts(name: str, folder: Path, evaluate: dict, ingest: dict, tokenize: dict, out: Path) -> dict:
    """The finetune stage's card facts (README.md's source, meta.json) completed with the test scores, the corpus,
    the best baseline and the provenance."""
    meta = json.loads((folder / "meta.json").read_text())
    counts, run = meta["counts"], meta["params"]["run"]
    scores = evaluate["runs"][name]
    test = {"split": evaluate["split"], "examples": evaluate["examples"], "interval": evaluate["interval"],
            **{k: scores[k] for k in ("accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95")}}  # fmt: skip
    config = json.loads((folder / ("base/config.json" if (folder / "base").exists() else "config.json")).read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    baselines = {n: r for n, r in evaluate["runs"].items() if "chosen" in r}
    facts = {
        "run": name, "method": run["method"], "init": run["init"], "knobs": run.get(run["method"]),
        "format": "peft" if (folder / "adapter_config.json").exists() else "standard", "labels": labels,
        "pooling": config["pooling"], "lr": counts["lr"], "augmented": run["augmented"],
        "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
        "base": counts["base"], "model_path": str(out), "test": test,
        "data": {"task": {k: v for k, v in ingest["task"].items() if k != "pool"}, "chapters": ingest.get("chapters"),
                 "train_examples": counts["train_examples"],  # chapters: the bundled task's splits (own data: none)
                 "corpus": {"documents": ingest["corpus_documents"], "tokens": tokenize["corpus_tokens"]}},
        "validation": {"accuracy": counts["best_val_accuracy"], "best_epoch": counts["best_epoch"]},
        "provenance": {"git": git_revision(), "dvc_lock": lock_hashes(f"finetune@{name}")},
    }  # fmt: skip
    if baselines:
        best = max(baselines, key=lambda n: baselines[n]["best_val_accuracy"])
        facts["baseline"] = {"name": best, "accuracy": baselines[best]["accuracy"]}
    return facts


def example(out: Path, texts: list[str]) -> None:
    """example/input.txt and what predict writes for it (example/predictions.jsonl), from the released folder."""
    from specialist.classifier import load
    from specialist.predict import classify

    model, tokenizer = load(out)
    rows = classify(model, tokenizer, texts, model_name=str(OUT))
    (out / "example").mkdir()
    (out / "example/input.txt").write_text("".join(f"{t}\n" for t in texts))
    (out / "example/predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(p: ReleaseParams, run_names: list[str], models: Path = MODELS, finetune_metrics: Path = FINETUNE_METRICS,
        evaluate: Path = EVALUATE, ingest: Path = INGEST, tokenize: Path = TOKENIZE, out: Path = OUT,
        metrics_path: Path = METRICS) -> dict:  # fmt: skip
    names = p.runs or run_names
    if missing := [n for n in names if not (finetune_metrics / f"{n}.json").exists()]:
        fail(f"release.runs: no metrics/finetune/<run>.json for {', '.join(missing)}; run `dvc repro` first")
    candidates = {n: json.loads((finetune_metrics / f"{n}.json").read_text()) for n in names}
    name = choose(candidates)
    evaluate_metrics = json.loads(evaluate.read_text())
    facts = release_facts(name, models / name, evaluate_metrics, json.loads(ingest.read_text()),
                          json.loads(tokenize.read_text()), out)  # fmt: skip
    text = card(facts)
    if problems := check(text):
        raise RuntimeError(f"the model card of {name} fails the metadata check: {problems}")
    with atomic_dir(out) as tmp:
        shutil.copytree(models / name, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*DROPPED))
        (tmp / "README.md").write_text(text)
        adapter = tmp / "adapter_config.json"
        if adapter.exists():  # PEFT resolves the base against the cwd: the repo root, where DVC runs
            config = json.loads(adapter.read_text())
            adapter.write_text(json.dumps({**config, "base_model_name_or_path": str(out / "base")}, indent=2) + "\n")
        example(tmp, p.examples)
    metrics = {"released": name, "method": facts["method"], "best_val_accuracy": candidates[name]["best_val_accuracy"],
               "test_accuracy": facts["test"]["accuracy"],
               "candidates": {n: c["best_val_accuracy"] for n, c in candidates.items()}}  # fmt: skip
    write_json(metrics, metrics_path)
    return metrics


def main() -> None:
    with open("params.yaml") as f:
        run_names = list(yaml.safe_load(f)["finetune"]["runs"])
    print(json.dumps(run(load_params("release", ReleaseParams), run_names), indent=2))


if __name__ == "__main__":
    main()
