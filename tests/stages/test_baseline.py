"""baseline + evaluate: the TF-IDF baseline picks its hyperparameters on validation, trains on the same labels as
finetune (plus paraphrases when augmented), saves without pickle, reloads to the same predictions, and is scored."""

import json

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict

from stages.baseline import (
    BaselineParams,
    BaselineRunParams,
    build,
    load_baseline,
    save_baseline,
    search,
    training_set,
)
from stages.baseline import run as baseline_run
from stages.common import ParamsError, load_params
from stages.evaluate import EvaluateParams, predict_baseline
from stages.evaluate import run as evaluate_run
from stages.ingest import LABELS
from tests.conftest import VERSES

P = BaselineParams(C=[1.0, 10.0], ngram_ranges=[[1, 1], [1, 2]], sublinear_tf=True, max_iter=500)


def rows(suffixes):
    """One verse per genre and suffix, keyed like the real task (book, chapter, verse)."""
    return [
        {"book": f"B{y}", "chapter": 1, "verse": i + 1, "text": t + s, "label": y}
        for y, t in VERSES.items()
        for i, s in enumerate(suffixes)
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    label = ClassLabel(names=LABELS)
    splits = {"train": rows(["", "."]), "validation": rows([" now"]), "test": rows(["!", " then", " again"])}
    DatasetDict({k: Dataset.from_list(v).cast_column("label", label) for k, v in splits.items()}).save_to_disk(
        root / "task"
    )
    # one paraphrase with a word no labeled verse has: only an augmented run can know it
    Dataset.from_list([{"text": "the lawgiver commanded", "label": 0}]).cast_column("label", label).save_to_disk(
        root / "augment"
    )
    return root


def test_search_picks_the_grid_point_most_accurate_on_validation():
    # word order is the only signal: unigrams see both sentences as the same bag, bigrams tell them apart
    train = (["dog bites man", "man bites dog"] * 3, [0, 1] * 3)
    val = (["dog bites man", "man bites dog"], [0, 1])
    for ranges in ([[1, 1], [1, 2]], [[1, 2], [1, 1]]):
        p = BaselineParams(C=[1.0], ngram_ranges=ranges, sublinear_tf=True, max_iter=200)
        pipe, best, table = search(train, val, p)
        assert {tuple(r["ngram_range"]): r["val_accuracy"] for r in table} == {(1, 1): 0.5, (1, 2): 1.0}
        assert best["ngram_range"] == [1, 2] and pipe[0].ngram_range == (1, 2)


def test_search_keeps_the_first_of_equally_accurate_points():
    train = (["law law law", "king king king"], [0, 1])
    pipe, best, table = search(train, train, BaselineParams([10.0, 1.0], [[1, 1]], True, 200))
    assert [r["val_accuracy"] for r in table] == [1.0, 1.0]
    assert best["C"] == 10.0 and pipe[-1].C == 10.0


def test_training_set_adds_the_paraphrases_only_when_augmented():
    train, aug = {"text": ["a", "b"], "label": [0, 1]}, {"text": ["c"], "label": [1]}
    assert training_set(train, aug, augmented=True) == (["a", "b", "c"], [0, 1, 1])
    assert training_set(train, aug, augmented=False) == (["a", "b"], [0, 1])
    assert training_set(train, None, augmented=False) == (["a", "b"], [0, 1])


def test_saved_model_reloads_to_the_same_predictions_without_pickle(tmp_path):
    texts, labels = training_set(Dataset.from_list(rows(["", "."])), None, False)
    pipe = build(10.0, [1, 2], P).fit(texts, labels)
    save_baseline(pipe, tmp_path, LABELS)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["baseline.json", "model.safetensors", "vocabulary.json"]
    loaded = load_baseline(tmp_path)
    unseen = [t + " forever" for t in VERSES.values()] + ["the Lord said to Moses", "seven heads of the beast"]
    np.testing.assert_array_equal(loaded.predict(unseen), pipe.predict(unseen))
    np.testing.assert_allclose(loaded.decision_function(unseen), pipe.decision_function(unseen), rtol=1e-12)


def test_fitting_twice_gives_identical_coefficients():
    texts, labels = training_set(Dataset.from_list(rows(["", "."])), None, False)
    a, b = (build(1.0, [1, 2], P).fit(texts, labels)[-1].coef_ for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_runs_record_their_choice_and_evaluate_scores_them(workspace, tmp_path):
    out = tmp_path / "models"
    infos = {}
    for name, augmented in (("tfidf", False), ("tfidf_bt", True)):
        r = BaselineRunParams(augmented=augmented)
        infos[name] = baseline_run(
            name,
            P,
            r,
            task_dir=workspace / "task",
            augment_dir=workspace / "augment",
            out=out,
            metrics_dir=tmp_path / "metrics",
        )
    assert infos["tfidf"]["train_examples"] == 14 and infos["tfidf_bt"]["train_examples"] == 15
    assert "lawgiver" in json.loads((out / "tfidf_bt/vocabulary.json").read_text())
    assert "lawgiver" not in json.loads((out / "tfidf/vocabulary.json").read_text())
    lr_size = 7 * infos["tfidf"]["vocabulary_size"] + 7  # coefficients + intercepts
    assert infos["tfidf"]["trainable_params"] == lr_size
    table = json.loads((out / "tfidf/meta.json").read_text())["counts"]["search"]
    assert len(table) == 4 and infos["tfidf"]["best_val_accuracy"] == max(r["val_accuracy"] for r in table)
    assert set(json.loads((out / "tfidf/top_features.json").read_text())) == set(LABELS)

    test = Dataset.load_from_disk(str(workspace / "task/test"))
    preds = predict_baseline(out / "tfidf", test)
    assert len(preds) == len(test) == 21 and set(preds) <= set(range(7))
    metrics = evaluate_run(EvaluateParams(split="test"), [], task_dir=workspace / "task",
                           metrics_path=tmp_path / "e.json", report_path=tmp_path / "e.md",
                           baseline_names=["tfidf", "tfidf_bt"], baselines=out,
                           baseline_metrics=tmp_path / "metrics", plots=tmp_path / "plots")  # fmt: skip
    assert set(metrics["runs"]) == {"tfidf", "tfidf_bt"} and metrics["examples"] == 21
    expected = sum(p == y for p, y in zip(preds, test["label"], strict=True)) / len(test)
    assert metrics["runs"]["tfidf"]["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert metrics["runs"]["tfidf"]["chosen"] == infos["tfidf"]["chosen"]
    assert metrics["runs"]["tfidf"]["trainable_share"] == 1.0
    assert "| tfidf | none | tfidf_logreg |" in (tmp_path / "e.md").read_text()


def run_row(init, augmented, accuracy, train_examples=224):
    return {"init": init, "augmented": augmented, "accuracy": accuracy, "train_examples": train_examples}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"C": [1.0, 0]}, "baseline.train.C"),
        ({"ngram_ranges": [[1, 2], [2, 1]]}, "baseline.train.ngram_ranges[1]"),
        ({"ngram_ranges": [[1, 2, 3]]}, "baseline.train.ngram_ranges[0]"),
        ({"max_iter": 0}, "baseline.train.max_iter"),
        ({"ngram_range": [1, 2]}, "ngram_range"),
    ],
)
def test_bad_params_name_the_key(tmp_path, change, key):
    train = {"C": [1.0], "ngram_ranges": [[1, 2]], "sublinear_tf": True, "max_iter": 100, **change}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"baseline": {"train": train}}))
    with pytest.raises(ParamsError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_params("baseline.train", BaselineParams, tmp_path / "params.yaml")


def test_the_repo_params_load():
    from tests.conftest import ROOT

    assert load_params("baseline.train", BaselineParams, ROOT / "params.yaml").C
    runs = yaml.safe_load((ROOT / "params.yaml").read_text())["baseline"]["runs"]
    loaded = {n: load_params(f"baseline.runs.{n}", BaselineRunParams, ROOT / "params.yaml") for n in runs}
    assert loaded["tfidf"].augmented is False and loaded["tfidf_bt"].augmented is True
