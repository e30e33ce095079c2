"""evaluate: predictions are scored in the split's order, and a verse without a prediction stops the run."""

import pytest

from stages.evaluate import aligned


def record(split: str, verse: int, prediction: int) -> dict:
    return {"split": split, "book": "Gen", "chapter": 1, "verse": verse, "prediction": prediction}


def test_aligned_follows_the_split_order_and_ignores_other_splits():
    records = [record("test", 2, 3), record("validation", 1, 6), record("test", 1, 5)]
    assert aligned(records, "test", [("Gen", 1, 1), ("Gen", 1, 2)]) == [5, 3]
    assert aligned(records, "validation", [("Gen", 1, 1)]) == [6]


def test_a_verse_without_a_prediction_fails_naming_it(capsys):
    with pytest.raises(SystemExit):
        aligned([record("validation", 1, 0)], "test", [("Gen", 1, 1)])
    assert "1 test verse(s) without a prediction, e.g. ('Gen', 1, 1)" in capsys.readouterr().err


def test_plot_files_for_dvc_plots():
    from stages.evaluate import confusion_csv, curve_csv

    assert confusion_csv([1, 0], [1, 1], ["law", "history"]) == "actual,predicted\nhistory,history\nhistory,law\n"
    curve = [{"epoch": 1, "train_loss": 1.5, "val_accuracy": 0.25}]
    assert curve_csv(curve) == "epoch,train_loss,val_accuracy\n1,1.500000,0.250000\n"


def test_a_run_that_predicts_one_class_is_marked_collapsed_and_still_reported():
    from stages.evaluate import collapse, report

    assert collapse([0, 0, 0, 1], ["a", "b"], 0.7) == {"top_class": "a", "top_class_share": 0.75, "collapsed": True}
    assert collapse([0, 1, 0, 1], ["a", "b"], 0.7)["collapsed"] is False
    row = {"init": "pretrained", "method": "adapter", "augmented": False, "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6],
           "macro_f1": 0.33, "macro_f1_ci95": [0.3, 0.4], "trainable_params": 10, "trainable_share": 0.1,
           "train_seconds": 1.0}  # fmt: skip
    metrics = {
        "split": "test",
        "examples": 40,
        "clusters": 40,
        "max_class_share": 0.9,
        "claims": [],
        "runs": {"adapter": {**row, **collapse([0] * 39 + [1], ["neg", "pos"], 0.9)}, "full": row},
    }
    text = report(metrics, ["neg", "pos"])
    assert "| adapter (collapsed: neg for 98%) | pretrained | adapter |" in text and "| full | pretrained |" in text
    assert "Collapsed (one class for more than 90% of the verses; still scored, and in the claims): adapter." in text
