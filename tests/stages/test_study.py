"""study: nested seeded subsets, perplexity of a fine-tuned body, the claims as measured, and the whole study as a
DVC target on the tiny project (outside the main `dvc repro`)."""

import json
import math
import shutil

import pytest
import torch
import yaml

from stages.study import claims, draw, perplexity, report, summary, translation_quality
from tests.conftest import run

KEYS = [("B", c, v) for c in range(1, 4) for v in range(1, 21)]  # 60 verses
LABELS = [i % 3 for i in range(len(KEYS))]  # 3 classes, 20 each
TRAIN = {k for i, k in enumerate(KEYS) if i < 15}  # 5 per class: the pipeline's own train split


def test_draw_is_balanced_nested_seeded_and_starts_from_the_train_split():
    small, default, large = (draw(KEYS, LABELS, TRAIN, n, seed=0) for n in (2, 5, 12))
    for picked, n in ((small, 2), (default, 5), (large, 12)):
        assert [LABELS[i] for i in picked].count(0) == n and len(picked) == 3 * n
    assert set(small) < set(default) < set(large)  # nested
    assert {KEYS[i] for i in default} == TRAIN  # the default size is the train split itself
    assert {KEYS[i] for i in small} <= TRAIN  # smaller sizes draw from it (their paraphrases exist)
    assert draw(KEYS, LABELS, TRAIN, 2, seed=0) == small  # seeded
    assert draw(KEYS, LABELS, TRAIN, 2, seed=1) != small


def test_summary_and_claims_state_each_claim_with_numbers():
    assert summary([0.5, 0.7]) == {"mean": 0.6, "std": 0.1414, "values": [0.5, 0.7]}

    def cell(acc):
        return {"accuracy": {"mean": acc, "std": 0.0, "values": [acc]}}

    s = {
        "sizes": [8, 32, 128], "default_size": 32, "seeds": [0], "runs": ["scratch", "full", "lora"],
        "baseline": "tfidf", "init": {"scratch": "scratch", "full": "pretrained", "lora": "pretrained"},
        "trainable_share": {"lora": 0.03},
        "data_efficiency": {
            "scratch": {"8": cell(0.20), "32": cell(0.30), "128": cell(0.45)},
            "full": {"8": cell(0.35), "32": cell(0.50), "128": cell(0.60)},
            "lora": {"8": cell(0.30), "32": cell(0.49), "128": cell(0.58)},
            "tfidf": {"8": cell(0.32), "32": cell(0.40), "128": cell(0.70)},
        },
        "augmentation": {"full": {**cell(0.40), "paraphrases": 70}},
        "forgetting_run": "full",
        "forgetting": {"perplexity_before": 90.0, "lr_scales": {
            "0.01": {"perplexity": {"mean": 95.0}}, "0.1": {"perplexity": {"mean": 120.0}},
            "1": {"perplexity": {"mean": 400.0}}}},
    }  # fmt: skip
    text = "\n".join(claims(s))
    assert "by >= 15 points at 32 labels per class: holds (full 50.0% vs scratch 30.0%, +20.0 points" in text
    assert "LoRA within 2 points of full fine-tuning with <= 5% of the parameters: holds (lora 49.0%" in text
    assert "Forgetting grows with the fine-tuning learning rate: holds" in text and "1x 400.0" in text
    # full@8 (35%) vs scratch: reached at 128 = 16x -> holds; full@32 (50%) never reached, 128 < 8x32 -> not measured
    assert "full with 8 labels per class matches scratch with >= 64: holds" in text
    assert "full with 32 labels per class matches scratch with >= 256: not measured" in text
    assert "At 8 labels per class, pre-trained runs beat tfidf (32.0%): full (full 35.0%, lora 30.0%)" in text
    assert "At 128 labels per class, pre-trained runs beat tfidf (70.0%): none" in text
    assert "(full_bt vs full): holds (40.0% vs 35.0%, +5.0 points" in text
    s["data_efficiency"]["scratch"]["32"] = cell(0.55)
    assert "does NOT hold (full 50.0% vs scratch 55.0%, -5.0 points" in "\n".join(claims(s))


def test_perplexity_of_an_untouched_body_is_the_pretrained_models_and_moves_when_the_body_does(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, GPT2Config

    from stages.pretrain import lm_loss

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    blocks = torch.randint(0, 50, (6, 16))
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    expected = math.exp(lm_loss(lm, blocks, 4, torch.device("cpu")))
    body = AutoModel.from_pretrained(tmp_path)
    assert perplexity(body, tmp_path, blocks, batch_size=4) == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        body.wte.weight.mul_(3.0)  # the tied output layer moves with the embeddings
    assert abs(perplexity(body, tmp_path, blocks, batch_size=4) - expected) > 1e-3


@pytest.mark.slow
def test_study_runs_as_its_own_dvc_target_and_reports_every_cell(tiny_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(tiny_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"].update(sizes=[2, 8], seeds=[0, 1], forgetting_lr_scales=[1.0, 0.1])
    # the tiny translators write junk that the quality filter drops: keep it, to have paraphrases to train on
    params["augment"].update(min_length_ratio=0.01, max_length_ratio=100.0, min_stopword_ratio=0.0, min_chrf=0.0,
                             max_chrf=100.0)  # fmt: skip
    params["gate"]["augment"].update(min_length_ratio=0.01, max_length_ratio=100.0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "study" not in run(["dvc", "repro"], project).stdout  # the main pipeline does not run it
    assert not (project / "metrics/study.json").exists()

    run(["dvc", "repro", "study/dvc.yaml"], project)
    s = json.loads((project / "metrics/study.json").read_text())
    assert s["default_size"] == 8 and s["sizes"] == [2, 8]
    for name in ("scratch", "full", "lora", "tfidf"):
        for size in ("2", "8"):
            assert len(s["data_efficiency"][name][size]["accuracy"]["values"]) == 2  # one per seed
    assert set(s["augmentation"]) == {"full", "tfidf"}  # study.augmented_runs
    assert s["augmentation"]["full"]["paraphrases"] > 0
    ppl = s["forgetting"]["lr_scales"]
    assert set(ppl) == {"0.1", "1"} and all(v["perplexity"]["mean"] > 1 for v in ppl.values())
    report = (project / "reports/study.md").read_text()
    assert "## The claims, as measured" in report and "LoRA within 2 points" in report
    assert (project / "reports/study/data_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "data_efficiency" in run(["dvc", "plots", "show", "--json"], project).stdout
    assert "changed" not in run(["dvc", "status", "study/dvc.yaml"], project).stdout  # recorded in study/dvc.lock
    assert not (project / "checkpoints/study").exists()  # finished cells are kept only while the study runs


def test_without_a_parallel_corpus_the_report_says_back_translation_was_not_measured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    why = "no parallel corpus (ingest.parallel is null) and augment.translators is pipeline"
    (tmp_path / "metrics/translate.json").write_text(json.dumps({"skipped": why}))
    (tmp_path / "metrics/augment.json").write_text(json.dumps({"skipped": why, "kept": 0}))
    q = translation_quality()
    assert q == {"skipped": why}
    cell = {"accuracy": {"mean": 0.3, "std": 0.0, "values": [0.3]}}
    s = {"sizes": [8], "default_size": 8, "seeds": [0], "runs": ["full"], "baseline": "tfidf",
         "init": {"full": "pretrained"}, "trainable_share": {}, "seconds": 1.0, "test_examples": 10,
         "data_efficiency": {"full": {"8": cell}, "tfidf": {"8": cell}},
         "augmentation": {"full": {**cell, "paraphrases": 0}}, "translation": q}  # fmt: skip
    assert f"Back-translation was not measured: {why}." in report(s)
