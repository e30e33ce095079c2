"""study: nested seeded subsets, perplexity of a fine-tuned body, the claims as measured, and the whole study as a
DVC target on the tiny project (outside the main `dvc repro`)."""

import gzip
import json
import math
import shutil

import pytest
import torch
import yaml

from specialist.scoring import Bootstrap
from stages.study import cell_summary, draw, perplexity, report, size_claims
from tests.conftest import run

LABELS = [i % 3 for i in range(60)]  # a pool of 60 verses, 3 classes, 20 each


def test_draw_is_balanced_nested_seeded_and_fresh_for_every_draw():
    small, default, large = (draw(LABELS, n, seed=0) for n in (2, 5, 12))
    for picked, n in ((small, 2), (default, 5), (large, 12)):
        assert [LABELS[i] for i in picked].count(0) == n and len(picked) == 3 * n
    assert set(small) < set(default) < set(large)  # nested
    assert draw(LABELS, 5, seed=0) == default  # seeded
    others = [set(draw(LABELS, 5, seed=d)) for d in range(1, 5)]
    assert all(o != set(default) for o in others)  # every draw its own labeled set, at the default size too
    assert len(set().union(*others, default)) > 3 * 5 * 2  # together they cover much of the pool


def cells_for(accuracies: dict, refs: list[int]) -> dict:
    """(run, size) -> results of draws that are right on a fixed, evenly spread share `acc` of the verses (the verses
    one run gets right are a subset of what a more accurate one gets right)."""
    out = {}
    for (name, size), accs in accuracies.items():
        right = [[(i * 37) % 100 < a * 100 for i in range(len(refs))] for a in accs]
        out[(name, size)] = [{"predictions": [y if ok else (y + 1) % 3 for ok, y in zip(r, refs, strict=True)],
                              "accuracy": a} for r, a in zip(right, accs, strict=True)]  # fmt: skip
    return out


def test_claims_at_each_size_are_decided_by_paired_intervals():
    refs = [i % 3 for i in range(400)]
    boot = Bootstrap([i // 20 for i in range(400)], replicates=500)  # 20 chapters of 20 verses
    cells = cells_for({("scratch", 8): [0.30, 0.32], ("full", 8): [0.50, 0.52], ("lora", 8): [0.49, 0.51],
                       ("tfidf", 8): [0.70, 0.70], ("scratch", 64): [0.40, 0.40]}, refs)  # fmt: skip
    info = {
        "scratch": {"init": "scratch", "augmented": False},
        "full": {"init": "pretrained", "augmented": False},
        "lora": {"init": "pretrained", "augmented": False},
        "tfidf": {"init": "none", "augmented": False},
    }
    by = {(c["a"], c["b"]): c for c in size_claims(cells, info, [8, 64], refs, boot)}
    assert by[("full", "scratch")]["verdict"] == "holds" and by[("full", "scratch")]["gap"] == 20.0
    assert by[("lora", "full")]["verdict"] == "holds"  # -1.0, paired: the same verses right in both
    assert by[("full", "tfidf")]["verdict"] == "does not hold"
    assert by[("full@8", "scratch@64")]["verdict"] == "holds" and by[("full@8", "scratch@64")]["gap"] == 11.0
    assert all(c["size"] == 8 for c in by.values())


def test_report_states_each_claim_with_its_interval_and_the_tables():
    refs = [i % 3 for i in range(300)]
    boot = Bootstrap([i // 15 for i in range(300)], replicates=300)
    cells = cells_for({("scratch", 8): [0.3], ("full", 8): [0.45], ("full_bt", 8): [0.5], ("tfidf", 8): [0.4]}, refs)
    info = {
        "scratch": {"init": "scratch", "augmented": False},
        "full": {"init": "pretrained", "augmented": False},
        "full_bt": {"init": "pretrained", "augmented": True},
        "tfidf": {"init": "none", "augmented": False},
    }
    summ = {r: {"8": cell_summary(cells[(r, 8)], refs, boot, 3)} for r in ("scratch", "full", "tfidf")}
    s = {
        "sizes": [8], "draws": {"8": 1}, "default_size": 8, "runs": ["scratch", "full"], "baselines": ["tfidf"],
        "pool": 900, "test_examples": 300, "test_chapters": 20, "seconds": 60.0, "cell_cpu_seconds": 240.0,
        "workers": 2, "forgetting_run": "full",
        "data_efficiency": summ, "claims": size_claims(cells, info, [8], refs, boot),
        "augmentation": {"full": {"8": {**cell_summary(cells[("full_bt", 8)], refs, boot, 3), "paraphrases": 12,
                                        "gain": boot.gap([cells[("full_bt", 8)][0]["predictions"]],
                                                         [cells[("full", 8)][0]["predictions"]], refs)}}},
        "translation": {"skipped": "no parallel corpus"},
        "forgetting": {"perplexity_before": 90.0, "lr_scales": {
            "0.01": {"perplexity": {"mean": 95.0, "std": 1.0, "values": [94.0, 96.0]}, **summ["full"]["8"]},
            "1": {"perplexity": {"mean": 400.0, "std": 10.0, "values": [390.0, 410.0]}, **summ["full"]["8"]}}},
    }  # fmt: skip
    text = report(s)
    assert (
        "- Pre-training then fine-tuning beats training from scratch by >= 10 points at 8 per class: **holds** "
        in text
    )
    assert "(full - scratch = +15.0 points, 95% CI [" in text
    assert "- Back-translation adds >= 2 points (full_bt vs full) at 8 per class: **" in text
    assert "| full | 0.450 [" in text and "| full | 8 | 0.450 [" in text and "| +5.0 [" in text
    assert "Back-translation was not measured: no parallel corpus." in text
    assert "- Forgetting grows with the fine-tuning learning rate: **holds**" in text
    assert "in 1.0 min (the cells' CPU time: 4 min, 2 workers)" in text
    assert "Labeled draws per size: 1 at 8. Each draw samples its verses per class afresh from the 900 verses" in text


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
def test_sized_runs_train_at_their_sizes_only_and_are_checked_against_the_draws():
    from stages.common import ParamsError, from_dict
    from stages.study import StudyParams, plan

    base = {"draws": {8: 2, 32: 3}, "runs": ["full"], "baselines": [], "augmented": {}, "forgetting_run": "full",
            "forgetting_lr_scales": [], "forgetting_draws": 1, "checkpoint_runs": [], "checkpoint_sizes": [],
            "checkpoint_train": {}}  # fmt: skip
    p = from_dict(StudyParams, {**base, "sized_runs": {"qlora": [32]}}, "study")
    runs = {name: type("Run", (), {"lr_scale": 1.0})() for name in ("full", "qlora")}
    cells = plan(p, runs, {}, default=32)
    assert sorted((c.run, c.size, c.draw) for c in cells if c.run == "qlora") == [("qlora", 32, d) for d in range(3)]
    assert len([c for c in cells if c.run == "full"]) == 5 and p.trained() == ["full", "qlora"]
    with pytest.raises(ParamsError, match="sized_runs: sizes \\[64\\] are not sizes of study.draws"):
        from_dict(StudyParams, {**base, "sized_runs": {"qlora": [64]}}, "study")
    with pytest.raises(ParamsError, match="sized_runs: \\['full'\\] are in study.runs"):
        from_dict(StudyParams, {**base, "sized_runs": {"full": [8]}}, "study")


def test_study_runs_as_its_own_dvc_target_and_reports_every_cell(tiny_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(tiny_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"].update(draws={2: 2, 8: 2}, augmented={"full": [2], "tfidf": [2]}, sized_runs={"qlora": [8]},
                           runs=["scratch", "full", "lora"], forgetting_lr_scales=[1.0, 0.1], forgetting_draws=1,
                           checkpoint_sizes=[8])  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "study" not in run(["dvc", "repro"], project).stdout  # the main pipeline does not run it
    assert not (project / "metrics/study.json").exists()

    run(["dvc", "repro", "study/dvc.yaml"], project)
    s = json.loads((project / "metrics/study.json").read_text())
    assert s["default_size"] == 8 and s["sizes"] == [2, 8] and s["draws"] == {"2": 2, "8": 2}
    for name in ("scratch", "full", "lora", "tfidf", "minilm_probe"):
        for size in ("2", "8"):
            c = s["data_efficiency"][name][size]
            assert len(c["values"]) == 2 and c["accuracy_ci95"][0] <= c["accuracy"] <= c["accuracy_ci95"][1]
    for name in ("minilm", "minilm_dapt", "setfit", "qlora"):  # at checkpoint_sizes or sized_runs' sizes only
        assert set(s["data_efficiency"][name]) == {"8"} and len(s["data_efficiency"][name]["8"]["values"]) == 2
    assert (project / "models/4_dapt/config.json").exists()  # study/dvc.yaml's dapt ran first
    assert set(s["augmentation"]) == {"full", "tfidf"} and set(s["augmentation"]["full"]) == {"2"}
    assert s["augmentation"]["full"]["2"]["paraphrases"] > 0 and "ci95" in s["augmentation"]["full"]["2"]["gain"]
    assert {c["verdict"] for c in s["claims"]} <= {"holds", "does not hold", "not resolved"}
    ppl = s["forgetting"]["lr_scales"]
    own = params["finetune"]["runs"][params["study"]["forgetting_run"]]["lr_scale"]  # its main cells count too
    assert set(ppl) == {"0.1", "1", f"{own:g}"} and all(v["perplexity"]["mean"] > 1 for v in ppl.values())
    report = (project / "reports/study.md").read_text()
    assert "## The claims, decided by the interval of the gap" in report and "LoRA comes within 2 points" in report
    assert "QLoRA (a 4-bit body) comes within 2 points of LoRA at 8 per class: **" in report  # where it trained
    assert 0 < s["trainable_share"]["qlora"] < 1
    assert s["weight_bytes"]["qlora"]["matrices"] < 0.3 * s["weight_bytes"]["lora"]["matrices"]  # 4-bit vs fp32
    assert s["weight_bytes"]["qlora"]["other"] == s["weight_bytes"]["lora"]["other"]  # embeddings, norms stay fp32
    assert "| qlora | qlora | " in report
    assert (project / "reports/study/data_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    with gzip.open(project / "data/8_study/predictions.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert {r["cell"] for r in rows} >= {"full@2", "full_bt@2", "tfidf@8"} and len(rows[0]["predictions"]) > 0
    assert "data_efficiency" in run(["dvc", "plots", "show", "--json"], project).stdout
    assert "changed" not in run(["dvc", "status", "study/dvc.yaml"], project).stdout  # recorded in study/dvc.lock
    assert not (project / "checkpoints/study").exists()  # finished cells are kept only while the study runs


@pytest.fixture
def checkpoint_study(tmp_path, monkeypatch):
    """A tiny BertModel checkpoint, a task with pool/validation/test (pipeline input_ids that a checkpoint run must
    not use), and the study's Inputs on it."""
    from datasets import ClassLabel, Dataset, DatasetDict

    import stages.study as study
    from stages.ingest import LABELS as GENRES
    from tests.conftest import VERSES
    from tests.stages.test_checkpoint_init import save_tiny_bert

    save_tiny_bert(tmp_path / "bert")
    rows = [{"text": t + s, "input_ids": [9, 9, 9], "label": y, "book": f"B{y}", "chapter": 1, "verse": i}
            for y, t in VERSES.items() for i, s in enumerate(["", ".", "!", " now"])]  # fmt: skip
    split = Dataset.from_list(rows).cast_column("label", ClassLabel(names=GENRES))
    DatasetDict({"pool": split, "validation": split, "test": split}).save_to_disk(tmp_path / "task")
    monkeypatch.setattr(study, "TASK", tmp_path / "task")
    monkeypatch.setattr(study, "CHECKPOINTS", tmp_path / "checkpoints")
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    x = study.Inputs(pool=cols, val=cols, test=cols, labels=GENRES, pad_id=1, base_lr=1.0, blocks=None,
                     fingerprint="pipeline")  # fmt: skip
    return x, tmp_path


def worker(x, t=None, runs=None, bp=None, baselines=None) -> dict:
    """The study's worker state, in this process, as init_worker leaves it."""
    import stages.study as study

    study._WORKER.clear()
    study._WORKER.update(x=x, paraphrases={}, own_inputs={}, embedded={}, t0=t, t_own=t, runs=runs or {}, bp=bp,
                         baselines=baselines or {})  # fmt: skip
    return study._WORKER


def test_a_checkpoint_run_trains_on_its_own_tokens_and_rate_at_its_sizes(checkpoint_study):
    import dataclasses
    from pathlib import Path

    from transformers import AutoTokenizer

    from stages.baseline import BaselineParams
    from stages.common import from_dict, load_params
    from stages.finetune import RunParams, TrainParams
    from stages.study import Cell, checkpoint_inputs, fit_cell

    x, tmp = checkpoint_study
    r = from_dict(RunParams, {"init": "checkpoint", "checkpoint": str(tmp / "bert"), "method": "full", "lr": 1e-3,
                              "augmented": False}, "finetune.runs.tiny")  # fmt: skip
    own = checkpoint_inputs(x, r)
    tok = AutoTokenizer.from_pretrained(tmp / "bert")
    assert own.pool["input_ids"][0] == tok(x.pool["text"][0])["input_ids"]  # [CLS] ... [SEP], its own ids
    assert own.test["input_ids"] == own.pool["input_ids"] and own.pad_id == tok.pad_token_id
    assert own.base_lr == 1e-3 and own.fingerprint.startswith("pipeline") and own.fingerprint != "pipeline"
    assert x.pool["input_ids"][0] == [9, 9, 9]  # the pipeline's inputs are left as they were

    t = dataclasses.replace(load_params("finetune.train", TrainParams, Path("params.yaml")), epochs=2, patience=1,
                            batch_size=4, eval_batch_size=8)  # fmt: skip
    bp = BaselineParams(C=[1.0], ngram_ranges=[[1, 1]], sublinear_tf=True, max_iter=200)
    w = worker(x, t, {"tiny": r}, bp)
    res = json.loads(Path(fit_cell(Cell("tiny", 2, 0, lr_scale=1.0))).read_text())
    assert len(res["predictions"]) == 28 and 0 <= res["accuracy"] <= 1 and "val_accuracy" in res
    assert set(w["own_inputs"]) == {"tiny"}  # re-encoded once, by its own tokenizer
    again = json.loads(Path(fit_cell(Cell("tiny", 2, 0, lr_scale=1.0))).read_text())
    assert again == res  # kept, not refitted


def test_a_probe_baseline_embeds_validation_and_test_once_per_study(checkpoint_study):
    from pathlib import Path

    from stages.baseline import BaselineParams, BaselineRunParams
    from stages.study import Cell, fit_cell

    x, tmp = checkpoint_study
    bp = BaselineParams(C=[1.0, 10.0], ngram_ranges=[[1, 1]], sublinear_tf=True, max_iter=200)
    probe = BaselineRunParams(augmented=False, features=str(tmp / "bert"))
    w = worker(x, bp=bp, baselines={"probe": probe, "tfidf": BaselineRunParams(augmented=False)})
    a, b = (json.loads(Path(fit_cell(Cell("probe", 2, d, neural=False))).read_text()) for d in (0, 1))
    assert len(a["predictions"]) == len(b["predictions"]) == 28 and a["chosen"]["C"] in bp.C
    assert set(w["embedded"]) == {(str(tmp / "bert"), "val"), (str(tmp / "bert"), "test")}
    tfidf = json.loads(Path(fit_cell(Cell("tfidf", 2, 0, neural=False))).read_text())
    assert "ngram_range" in tfidf["chosen"]  # TF-IDF's own search, as before


def test_checkpoint_runs_come_from_extra_runs_and_a_local_one_must_be_a_study_dep(tmp_path, monkeypatch):
    import stages.study as study
    from stages.common import ParamsError, load_params
    from stages.study import StudyParams, checkpoint_runs

    p = load_params("study", StudyParams)
    runs = checkpoint_runs(p)
    assert set(runs) == {"minilm", "minilm_dapt"} and runs["minilm_dapt"].checkpoint == "./models/4_dapt"
    assert 32 in p.checkpoint_sizes and {"minilm_probe", "setfit"} <= set(p.baselines)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/4_dapt").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text((study.Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    (tmp_path / "study").mkdir()
    (tmp_path / "study/dvc.yaml").write_text(yaml.safe_dump({"stages": {"study": {"deps": ["stages/study.py"]}}}))
    with pytest.raises(ParamsError, match="minilm_dapt's checkpoint ./models/4_dapt is not a dependency of the study"):
        checkpoint_runs(p)
