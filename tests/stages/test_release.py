"""release: the best run on validation (never test) lands in models/release with a complete, valid card and an example
that predict reproduces; a PEFT release loads with PEFT's Auto class from the repo root."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

from specialist.card import check
from specialist.predict import predict
from stages.common import load_params
from stages.finetune import TrainParams
from stages.finetune import run as finetune_run
from stages.release import ReleaseParams, choose, lock_hashes
from stages.release import run as release_run
from tests.specialist.test_classifier import every_run, project  # noqa: F401 - project is a fixture

ROOT = Path(__file__).resolve().parents[2]


def test_choose_takes_the_best_validation_accuracy_then_fewer_parameters_then_the_name():
    runs = {"b": {"best_val_accuracy": 0.4, "trainable_params": 5}, "a": {"best_val_accuracy": 0.4,
            "trainable_params": 5}, "c": {"best_val_accuracy": 0.4, "trainable_params": 9},
            "d": {"best_val_accuracy": 0.3, "trainable_params": 1}}  # fmt: skip
    assert choose(runs) == "a"
    assert choose({"x": {"best_val_accuracy": 0.1, "trainable_params": 1}}) == "x"


def test_lock_hashes_reads_a_stages_deps_and_outs(tmp_path):
    lock = {
        "schema": "2.0",
        "stages": {
            "finetune@lora": {
                "deps": [{"path": "data/3_tokenize/task", "md5": "abc.dir"}],
                "outs": [{"path": "models/x", "md5": "def"}, {"path": "metrics/finetune/lora.json", "md5": "0"}],
            }
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    expected = {"data/3_tokenize/task": "abc.dir", "models/x": "def"}
    assert lock_hashes("finetune@lora", tmp_path / "dvc.lock") == expected
    assert lock_hashes("finetune@full", tmp_path / "dvc.lock") == {} and lock_hashes("x", tmp_path / "none") == {}


@pytest.fixture(scope="module")
def released(project):  # noqa: F811
    """full and lora fine-tuned (tiny), lora better on validation and worse on test; metrics and dvc.lock as
    `dvc repro` leaves them; release run in the project's root."""
    cwd = Path.cwd()
    os.chdir(project)
    try:
        t = dataclasses.replace(load_params("finetune.train", TrainParams, ROOT / "params.yaml"), epochs=1,
                                batch_size=4, eval_batch_size=8)  # fmt: skip
        runs = every_run()
        for name in ("full", "lora"):
            finetune_run(name, t, runs[name])
            summary = json.loads(Path(f"metrics/finetune/{name}.json").read_text())
            summary["best_val_accuracy"] = {"full": 0.5, "lora": 0.9}[name]
            Path(f"metrics/finetune/{name}.json").write_text(json.dumps(summary))
        scores = {"full": 0.8, "lora": 0.6}
        evaluate = {"split": "test", "examples": 28, "interval": "95%, chapter bootstrap", "runs": {
            **{n: {"accuracy": a, "accuracy_ci95": [a - 0.1, a + 0.1], "macro_f1": a - 0.05,
                   "macro_f1_ci95": [a - 0.15, a + 0.05]} for n, a in scores.items()},
            "tfidf": {"accuracy": 0.7, "best_val_accuracy": 0.6, "chosen": {"C": 1.0}}}}  # fmt: skip
        Path("metrics/evaluate.json").write_text(json.dumps(evaluate))
        Path("metrics/ingest.json").write_text(json.dumps({"chapters": {"train": 3, "validation": 3, "test": 3},
                                                           "corpus_documents": 10, "task": {"train": 28,
                                                           "validation": 28, "test": 28, "pool": 5}}))  # fmt: skip
        Path("metrics/tokenize.json").write_text(json.dumps({"corpus_tokens": 12345}))
        lock = {"stages": {"finetune@lora": {"deps": [{"path": "data/3_tokenize/task", "md5": "1234abcd.dir"}]}}}
        Path("dvc.lock").write_text(yaml.safe_dump(lock))
        params = ReleaseParams(runs=[], examples=["Jesus said to his disciples, follow me", "wisdom is better"])
        metrics = release_run(params, ["full", "lora"])
        yield project, metrics
    finally:
        os.chdir(cwd)


def test_release_takes_the_best_run_on_validation_not_on_test(released):
    root, metrics = released
    assert metrics["released"] == "lora" and metrics["test_accuracy"] == 0.6  # full is better on test: not looked at
    assert metrics["candidates"] == {"full": 0.5, "lora": 0.9}
    assert json.loads((root / "metrics/release.json").read_text()) == metrics


def test_the_released_card_is_complete_and_passes_the_metadata_check(released):
    root, _ = released
    text = (root / "models/release/README.md").read_text()
    assert check(text) == []
    from huggingface_hub import ModelCard

    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "text-classification" and data["language"] == "en"
    assert data["license"] == "other" and data["license_name"] == "public-domain-data"
    [result] = data["model-index"][0]["results"][:1]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.6, "name": "Accuracy"}
    for needle in ("0.600 (95% CI 0.500-0.700)", "macro-F1 0.550 (95% CI 0.450-0.650)", "Git revision: ",
                   "`data/3_tokenize/task`: 1234abcd.dir", "12,345 tokens", "tfidf", "28 train", "3 test chapters",
                   "Method: `lora`", "Intended use and limits"):  # fmt: skip
        assert needle in text, needle


def test_the_released_peft_folder_loads_from_the_repo_root_and_its_example_is_what_predict_writes(released):
    root, _ = released
    from peft import AutoPeftModelForSequenceClassification

    import specialist.classifier  # noqa: F401 - registers the model type

    adapter = json.loads((root / "models/release/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/release/base"
    cwd = Path.cwd()
    os.chdir(root)  # the repo root: where DVC runs, and what the recorded base path is relative to
    try:
        model = AutoPeftModelForSequenceClassification.from_pretrained("models/release")
        assert model.config.id2label[4] == "gospels"
        texts = (root / "models/release/example/input.txt").read_text().splitlines()
        example = (root / "models/release/example/predictions.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in example]
        assert [r["label"] for r in rows] == [r["label"] for r in predict(texts, "models/release")]
    finally:
        os.chdir(cwd)
    assert not (root / "models/release/predictions.jsonl").exists()
