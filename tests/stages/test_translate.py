"""translate: tiny translators train, save loadable models and metrics, resume bit-exactly; Apertium is scored beside
them on the same pairs (or said to be missing) and the report is generated from the metrics; BLEU/chrF modules match
sacrebleu."""

import dataclasses
import json
from pathlib import Path

import evaluate
import pytest
import sacrebleu
from safetensors.torch import load_file

from stages import translate as T
from stages.common import from_dict, load_params
from stages.ingest import IngestParams
from stages.ingest import run as ingest

ROOT = Path(__file__).resolve().parents[2]

# The real config shrunk: same code paths, a 1-layer 32-dim model, a few steps.
TINY = dict(
    seed=0, threads=0, vocab_size=300, min_frequency=2, max_length=24, d_model=32, layers=1, heads=2, ffn_dim=64,
    dropout=0.1, init_std=0.05, max_steps=6, batch_size=8, lr=1e-3, warmup_steps=2, weight_decay=0.01,
    label_smoothing=0.1, grad_clip=1.0, checkpoint_every=3, log_every=3, eval_pairs=4, num_beams=1,
    no_repeat_ngram_size=3, batch_size_eval=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def parallel(tmp_path_factory) -> Path:
    """The real parallel corpus from the bundled raw data, cut to 300 training and 6 validation pairs."""
    from datasets import DatasetDict, load_from_disk

    tmp = tmp_path_factory.mktemp("ingest")
    ingest(
        load_params("ingest", IngestParams, ROOT / "params.yaml"), ROOT / "data/raw", tmp / "1_ingest", tmp / "m.json"
    )
    full = load_from_disk(str(tmp / "1_ingest/parallel"))
    small = DatasetDict({"train": full["train"].select(range(300)), "validation": full["validation"].select(range(6))})
    small.save_to_disk(str(tmp / "parallel"))
    return tmp / "parallel"


@pytest.fixture
def no_apertium(tmp_path, monkeypatch):
    """Apertium's data folder made empty for the test (and its subprocesses): the tests of training and resuming
    need no Apertium scoring, which costs a few seconds per run."""
    monkeypatch.setenv("APERTIUM_DATADIR", str(tmp_path / "no-apertium"))


def run_tiny(tmp: Path, parallel: Path, **overrides) -> dict:
    p = T.TranslateParams(**{**TINY, **overrides})
    return T.run(p, parallel, tmp / "models", tmp / "translate.json", tmp / "checkpoints", tmp / "translate.md")


def weights(models: Path) -> dict:
    return {d: load_file(str(models / d / "model.safetensors")) for d in T.DIRECTIONS}


def test_params_yaml_section_loads():
    p = load_params("translate", T.TranslateParams, ROOT / "params.yaml")
    assert p.max_steps >= 1 and p.d_model % p.heads == 0


def test_invalid_params_are_named():
    with pytest.raises(ValueError, match="d_model"):
        from_dict(T.TranslateParams, {**TINY, "d_model": 30, "heads": 4}, "translate")


def test_tokenizer_ends_with_eos_and_round_trips():
    texts = ["In the beginning, God created the heavens and the earth.", "EN el principio crió Dios los cielos."] * 20
    tok = T.train_tokenizer(texts, vocab_size=300, min_frequency=2, max_length=16)
    ids = tok(texts[0])["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.unk_token_id == 2
    assert tok.decode(ids, skip_special_tokens=True).strip() == texts[0]
    long = tok("word " * 100, truncation=True, max_length=16)["input_ids"]
    assert len(long) == 16 and long[-1] == tok.eos_token_id  # truncation keeps the </s>


def test_draw_batch_is_a_function_of_step():
    lengths = [(i * 37) % 50 for i in range(1000)]
    a = T.draw_batch(lengths, 8, step=5, seed=1)
    assert a == T.draw_batch(lengths, 8, step=5, seed=1) != T.draw_batch(lengths, 8, step=6, seed=1)
    assert len(a) == len(set(a)) == 8 and all(0 <= i < 1000 for i in a)
    span = max(lengths[i] for i in a) - min(lengths[i] for i in a)
    assert span <= 10  # a slice of a length-sorted megabatch of 128: similar lengths


def test_evenly_spaced():
    assert T.evenly_spaced(10, 3) == [0, 3, 6]
    assert T.evenly_spaced(2, 5) == [0, 1]
    assert T.evenly_spaced(5, 0) == [0, 1, 2, 3, 4]  # eval_pairs 0: every held-out pair


def test_run_saves_loadable_models_and_metrics(tmp_path, parallel):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    metrics = run_tiny(tmp_path, parallel)
    assert json.loads((tmp_path / "translate.json").read_text()) == metrics
    for d in T.DIRECTIONS:
        assert {"bleu", "chrf"} <= set(metrics[d]) and 0 <= metrics[d]["chrf"] <= 100
    assert {"round_trip_chrf", "train_seconds"} <= set(metrics)
    for d in T.DIRECTIONS:
        model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "models" / d)
        tok = AutoTokenizer.from_pretrained(tmp_path / "models" / d)
        enc = tok(["God said."], return_tensors="pt")
        assert enc["input_ids"][0, -1] == tok.eos_token_id
        out = model.generate(**enc, max_new_tokens=5)
        assert out.shape[0] == 1 and isinstance(tok.decode(out[0], skip_special_tokens=True), str)
        assert json.loads((tmp_path / "models" / d / "meta.json").read_text())["params"]["d_model"] == TINY["d_model"]
    assert (tmp_path / "models/samples.jsonl").read_text().count("\n") == TINY["eval_pairs"]
    assert not (tmp_path / "checkpoints").exists()  # removed once the models are written


def test_apertium_is_scored_on_the_same_pairs_and_the_report_is_generated(tmp_path, parallel):
    from datasets import load_from_disk

    from stages import apertium

    metrics = run_tiny(tmp_path, parallel, eval_pairs=0)
    val = load_from_disk(str(parallel))["validation"]
    assert metrics["eval_pairs"] == len(val) == 6  # 0 = all
    a = metrics["apertium"]
    en_es = apertium.translate(list(val["source"]), "eng-spa")
    assert a["en-es"] == T.score(en_es, list(val["target"]))  # the same pairs, the same scorer
    assert set(a["round_trip_chrf"]) == set(apertium.PIVOTS) and all(
        0 < c <= 100 for c in a["round_trip_chrf"].values()
    )
    assert a["round_trip_chrf"]["spa"] > metrics["round_trip_chrf"]  # a rule-based system vs 6 steps of training
    assert a["versions"] == apertium.versions(list(apertium.PIVOTS))
    report = (tmp_path / "translate.md").read_text()
    assert report == T.report(metrics) and "so it does not decide" in report
    assert f"| Apertium (eng-spa, spa-eng) | {a['en-es']['bleu']} | {a['en-es']['chrf']} |" in report
    assert all(f"| Apertium, via {pivot} |" in report for pivot in apertium.PIVOTS)
    sample = json.loads((tmp_path / "models/samples.jsonl").read_text().splitlines()[0])
    assert sample["apertium en-es"] == en_es[0] and sample["apertium en-es-en"]


def test_without_apertium_the_own_translators_are_still_scored(tmp_path, parallel, no_apertium):
    metrics = run_tiny(tmp_path, parallel, max_steps=2, checkpoint_every=0)
    assert "not installed" in metrics["apertium"]["skipped"] and "chrf" in metrics["en-es"]
    assert "Apertium: not measured" in (tmp_path / "translate.md").read_text()


class Crash(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(tmp_path, parallel, monkeypatch, capsys, no_apertium):
    run_tiny(tmp_path / "straight", parallel)

    real_save = T.save_checkpoint

    def save_then_crash(path, *args, **kwargs):  # the process dies right after the first checkpoint (step 3)
        real_save(path, *args, **kwargs)
        raise Crash

    monkeypatch.setattr(T, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        run_tiny(tmp_path / "resumed", parallel)
    ckpt = tmp_path / "resumed/checkpoints/en-es"
    assert json.loads((ckpt / "checkpoint.json").read_text())["step"] == 3
    assert not (tmp_path / "resumed/models").exists()

    monkeypatch.setattr(T, "save_checkpoint", real_save)
    capsys.readouterr()
    run_tiny(tmp_path / "resumed", parallel)
    assert "resuming at step 3" in capsys.readouterr().out
    straight, resumed = weights(tmp_path / "straight/models"), weights(tmp_path / "resumed/models")
    for d in T.DIRECTIONS:
        assert straight[d].keys() == resumed[d].keys()
        assert all((straight[d][k] == resumed[d][k]).all() for k in straight[d]), d


def test_checkpoint_of_other_params_is_not_resumed(tmp_path, parallel, monkeypatch, capsys, no_apertium):
    def crash(*args, **kwargs):
        raise Crash

    real_save = T.save_checkpoint
    monkeypatch.setattr(T, "save_checkpoint", lambda *a, **k: (real_save(*a, **k), crash()))
    with pytest.raises(Crash):
        run_tiny(tmp_path, parallel)
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    capsys.readouterr()
    run_tiny(tmp_path, parallel, lr=2e-3)
    out = capsys.readouterr().out
    assert "starting afresh" in out and "resuming" not in out


# --- metric modules: parity with sacrebleu on literal sentences ------------------------------------------------

HYP = ["the cat sat on the mat", "God created the heavens and the earth.", "he went away"]
REF = ["the cat is on the mat", "In the beginning, God created the heavens and the earth.", "and he departed"]
REF2 = ["a cat sat on a mat", "God made the sky and the land.", "he left"]


def test_bleu_module_matches_sacrebleu():
    bleu = evaluate.load(str(ROOT / "metric_modules/sacrebleu_bleu"))
    out = bleu.compute(predictions=HYP, references=REF)
    ref = sacrebleu.corpus_bleu(HYP, [REF])
    assert out["bleu"] == pytest.approx(ref.score) and out["precisions"] == pytest.approx(ref.precisions)
    two = bleu.compute(predictions=HYP, references=[[a, b] for a, b in zip(REF, REF2, strict=True)])
    assert two["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYP, [REF, REF2]).score)
    assert bleu.compute(predictions=REF, references=REF)["bleu"] == pytest.approx(100.0)
    # textbook case: 1-gram 5/6, 2-gram 3/5, 3-gram 1/4, 4-gram 1/6 (smoothed), no brevity penalty
    single = bleu.compute(predictions=HYP[:1], references=REF[:1])
    assert single["precisions"] == pytest.approx([500 / 6, 60.0, 25.0, 100 / 6]) and single["brevity_penalty"] == 1


def test_chrf_module_matches_sacrebleu():
    chrf = evaluate.load(str(ROOT / "metric_modules/chrf"))
    out = chrf.compute(predictions=HYP, references=REF, sentence_scores=True)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYP, [REF]).score)
    assert out["sentence_chrf"] == pytest.approx(
        [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(HYP, REF, strict=True)]
    )
    plus = chrf.compute(predictions=HYP, references=REF, word_order=2)["chrf"]
    assert plus == pytest.approx(sacrebleu.corpus_chrf(HYP, [REF], word_order=2).score)
    assert chrf.compute(predictions=REF, references=REF)["chrf"] == pytest.approx(100.0)


def test_dataclass_fields_match_params_yaml():
    import yaml

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["translate"]
    assert list(section) == [f.name for f in dataclasses.fields(T.TranslateParams)]


def test_sigkilled_run_resumes_to_identical_models(tmp_path, parallel, no_apertium):
    """`python -m stages.translate` killed with SIGKILL after its first checkpoint, then rerun, ends with the same
    weights, byte for byte, as a run never interrupted; the killed run left no models folder."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["translate"].update({**TINY, "threads": 1, "max_steps": 30})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        shutil.copytree(parallel, d / T.PARALLEL)
        (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def start(cwd):
        return subprocess.Popen([sys.executable, "-m", "stages.translate"], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    proc = start(straight)
    assert proc.wait() == 0, proc.stdout.read()
    proc = start(killed)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").rglob("checkpoint.json")):
        assert proc.poll() is None and time.time() < deadline, "finished before a checkpoint could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / T.OUT).exists()  # nothing half-written is taken for a finished model
    proc = start(killed)
    log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert "resuming at step" in log
    for d in T.DIRECTIONS:
        a, b = ((root / T.OUT / d / "model.safetensors").read_bytes() for root in (straight, killed))
        assert a == b, f"{d} differs after the resume"
    assert not list((killed / "checkpoints").rglob("checkpoint.json"))  # removed once the models are written
