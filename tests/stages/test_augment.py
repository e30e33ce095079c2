"""augment: each filter drops with its reason on literal pairs; end to end on tiny translators, labels are kept,
the output has the task's features (even when empty), metrics add up, and a rerun repeats. Translators given as
local paths give the pipeline's output; a rerun reads every translation from the cache (a corrupt entry is
ignored); an unreachable hub name fails with one message naming the params key."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from stages import augment as A
from stages.common import load_params
from stages.ingest import IngestParams
from stages.ingest import run as ingest
from stages.translate import TranslateParams
from stages.translate import run as translate

ROOT = Path(__file__).resolve().parents[2]

P = A.AugmentParams(
    seed=0, threads=0, num_paraphrases=2, pivot_beams=1, top_k=20, top_p=0.9, temperature=1.0, max_length=24,
    batch_size=16, min_length_ratio=0.5, max_length_ratio=1.6, min_stopword_ratio=0.2, min_chrf=25.0, max_chrf=90.0,
    samples=3, drop_repetitive=True,
)  # fmt: skip
LENIENT = dataclasses.replace(P, min_length_ratio=0.0, max_length_ratio=1000.0, min_stopword_ratio=0.0, min_chrf=0.0,
                              max_chrf=100.0, drop_repetitive=False)  # fmt: skip
SOURCE = "Then God said to Noah, “Go out of the ship, you and your wife.”"


def cand(text: str, chrf: float = 50.0, source: str = SOURCE) -> dict:
    return {"text": text, "source_text": source, "chrf": chrf}


@pytest.mark.parametrize(
    "text, chrf, reason",
    [
        ("then god said to noah go out of the ship you and your wife", 99.0, "identical_to_source"),
        ("God said to Noah.", 40.0, "too_short"),
        (SOURCE + " And he said it again and again, and again and again to all of them.", 60.0, "too_long"),
        ("Entonces habló Dios á Noé, diciendo: Sal del arca tú, y tu mujer.", 30.0, "not_english"),
        ("So the LORD spoke unto Noah: leave the ark with thy wife, thou and she.", 12.0, "too_different"),
        ("Then God said to Noah, “Go out of the ship, the ship, you and your wife.”", 60.0, "repetitive"),
        ("Then God God said to Noah, “Go out of the ship, you and your wife.”", 60.0, "repetitive"),
        ("Then God said to Noah, “Go out of the ship, you and your own wife.”", 95.0, "too_similar"),
        ("God told Noah, “Leave the ship, you and your wife, and go out.”", 55.0, None),
    ],
)
def test_filters_name_the_reason(text, chrf, reason):
    assert next((r for f in A.FILTERS if (r := f(cand(text, chrf), P))), None) == reason


def test_repetition_the_source_has_is_no_loop():
    source = "Holy, holy, holy is the LORD of Armies! The LORD of Armies is holy."
    assert (
        A.repetition_filter(cand("Holy, holy, holy is the LORD of Armies, the LORD of Armies!", source=source), P)
        is None
    )
    assert A.repetition_filter(cand("And the king said, and the people said.", source="The king said."), P) is None
    assert A.repetition_filter(cand("The king said, the king said.", source="The king said."), P) == "repetitive"
    assert A.repetition_filter(cand("The king said, the king said.", source="The king said."), LENIENT) is None


def test_fluency_filter_drops_above_the_ratio_and_is_off_without_scores():
    p = dataclasses.replace(P, fluency_model="pipeline", max_perplexity_ratio=2.0)
    assert A.fluency_filter({**cand("x"), "perplexity_ratio": 2.5}, p) == "not_fluent"
    assert A.fluency_filter({**cand("x"), "perplexity_ratio": 1.9}, p) is None
    assert A.fluency_filter(cand("x"), p) is None  # not scored (fluency skipped)
    assert A.fluency_filter({**cand("x"), "perplexity_ratio": 9.0}, P) is None  # max_perplexity_ratio 0: off


def test_keep_per_verse_keeps_the_most_fluent_in_candidate_order():
    texts = ["God told Noah, “Leave the ship.”", "Noah was told to leave the ark with his wife.",
             "God said to Noah: go out of the boat, you and your wife."]  # fmt: skip
    cands = [{**cand(t), "perplexity_ratio": r} for t, r in zip(texts, [1.5, 1.1, 1.3], strict=True)]
    other = {**cand("He went out.", source="Noah went out."), "perplexity_ratio": 1.9}
    kept, dropped = A.quality_gate([*cands, other], dataclasses.replace(LENIENT, keep_per_verse=2))
    assert [c["text"] for c in kept] == [texts[1], texts[2], "He went out."]
    assert dropped == [("surplus", cands[0])]
    kept_all, _ = A.quality_gate(cands, LENIENT)  # keep_per_verse 0: every survivor
    assert kept_all == cands


def test_quality_gate_drops_duplicates_and_counts_every_candidate():
    good = "God told Noah, “Leave the ship, you and your wife, and go out.”"
    cands = [
        cand(good),
        cand(good.lower() + "!"),
        cand("God said to Noah."),
        cand("Noah went out with his wife from the ark."),
    ]
    kept, dropped = A.quality_gate(cands, P)
    assert [c["text"] for c in kept] == [good, "Noah went out with his wife from the ark."]
    assert [r for r, _ in dropped] == ["duplicate", "too_short"]


def test_words():
    assert A.words("God said, “Let") == ["god", "said", "let"]


def test_params_yaml_section_loads():
    import yaml

    p = load_params("augment", A.AugmentParams, ROOT / "params.yaml")
    assert p.min_chrf < p.max_chrf
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["augment"]
    assert list(section) == [f.name for f in dataclasses.fields(A.AugmentParams)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(task, translators): the real task cut to 3 verses per genre, and tiny translators trained a few steps."""
    from datasets import DatasetDict, load_from_disk

    tmp = tmp_path_factory.mktemp("augment")
    p = dataclasses.replace(
        load_params("ingest", IngestParams, ROOT / "params.yaml"), train_per_class=3, eval_per_class=3
    )
    ingest(p, ROOT / "data/raw", tmp / "1_ingest", tmp / "ingest.json")
    full = load_from_disk(str(tmp / "1_ingest/parallel"))
    DatasetDict(
        {"train": full["train"].select(range(200)), "validation": full["validation"].select(range(4))}
    ).save_to_disk(str(tmp / "parallel"))
    tiny = TranslateParams(
        seed=0, threads=0, vocab_size=300, min_frequency=2, max_length=24, d_model=32, layers=1, heads=2, ffn_dim=64,
        dropout=0.0, init_std=0.05, max_steps=4, batch_size=8, lr=1e-3, warmup_steps=1, weight_decay=0.0,
        label_smoothing=0.1, grad_clip=1.0, checkpoint_every=0, log_every=10, eval_pairs=2, num_beams=1,
        no_repeat_ngram_size=0, batch_size_eval=4,
    )  # fmt: skip
    translate(tiny, tmp / "parallel", tmp / "5_translate", tmp / "translate.json", tmp / "checkpoints")
    return tmp / "1_ingest/task", tmp / "5_translate"


def run_augment(tmp: Path, inputs, p: A.AugmentParams, cache: Path | None = None) -> tuple[dict, Path]:
    task, models = inputs
    metrics = A.run(p, task, models, tmp / "6_augment", tmp / "augment.json", cache=cache or tmp / "cache")
    return metrics, tmp / "6_augment"


def test_end_to_end_keeps_labels(tmp_path, inputs):
    from datasets import load_from_disk

    metrics, out = run_augment(tmp_path, inputs, LENIENT)
    task = load_from_disk(str(inputs[0]))["train"]
    aug = load_from_disk(str(out))
    assert metrics["sources"] == len(task) == 21 and metrics["generated"] == 2 * len(task)
    assert metrics["kept"] == len(aug) > 0 and metrics["kept"] + sum(metrics["drops"].values()) == metrics["generated"]
    assert json.loads((tmp_path / "augment.json").read_text()) == metrics
    assert aug.column_names == ["text", "label", "source_text", "book", "chapter", "verse"]
    assert aug.features["label"] == task.features["label"]
    label_of = dict(zip(task["text"], task["label"], strict=True))
    assert all(label_of[s] == lab for s, lab in zip(aug["source_text"], aug["label"], strict=True))
    assert all(t != s for t, s in zip(aug["text"], aug["source_text"], strict=True))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert any(s["status"] == "kept" for s in samples) and all(
        s["label"] in task.features["label"].names for s in samples
    )
    assert json.loads((out / "meta.json").read_text())["counts"]["kept"] == metrics["kept"]

    again, out2 = run_augment(tmp_path / "again", inputs, LENIENT)
    assert again["kept"] == metrics["kept"] and list(load_from_disk(str(out2))["text"]) == list(aug["text"])


def test_everything_dropped_writes_an_empty_dataset(tmp_path, inputs):
    from datasets import load_from_disk

    strict = dataclasses.replace(P, min_chrf=99.0, max_chrf=99.5)
    metrics, out = run_augment(tmp_path, inputs, strict)
    aug = load_from_disk(str(out))
    assert metrics["kept"] == len(aug) == 0 and sum(metrics["drops"].values()) == metrics["generated"]
    assert aug.column_names == ["text", "label", "source_text", "book", "chapter", "verse"]
    assert aug.features["label"] == load_from_disk(str(inputs[0]))["train"].features["label"]


def local(models: Path, **options) -> A.Translators:
    return A.Translators(A.Translator(str(models / "en-es"), **options), str(models / "es-en"))


def test_translators_params_parse():
    from stages.common import ParamsError, from_dict

    fields = {f.name: getattr(P, f.name) for f in dataclasses.fields(P)}
    p = from_dict(
        A.AugmentParams, {**fields, "translators": {"en_es": "a/b", "es_en": {"model": "c", "prefix": "x"}}}, "t"
    )
    assert p.translators == A.Translators("a/b", A.Translator("c", prefix="x"))
    assert from_dict(A.AugmentParams, fields, "t").translators == "pipeline"
    with pytest.raises(ParamsError, match="translators"):
        from_dict(A.AugmentParams, {**fields, "translators": "opus"}, "t")


def test_local_translators_paraphrase_and_a_rerun_reads_the_cache(tmp_path, inputs):
    from datasets import load_from_disk

    ours, out0 = run_augment(tmp_path / "pipeline", inputs, LENIENT)
    p = dataclasses.replace(LENIENT, translators=local(inputs[1]))
    first, out1 = run_augment(tmp_path / "first", inputs, p, cache=tmp_path / "cache")
    assert first["kept"] > 0 and first["kept"] + sum(first["drops"].values()) == first["generated"] == 42
    assert json.loads((tmp_path / "first/augment.json").read_text())["drops"] == first["drops"]
    assert first["translation_cache"] == {"pivot": {"hits": 0, "misses": 21}, "back": {"hits": 0, "misses": 21},
                                          "corrupt": 0}  # fmt: skip
    texts = list(load_from_disk(str(out1))["text"])
    if not torch.cuda.is_available():  # the same models on the same device: the pipeline's paraphrases
        assert texts == list(load_from_disk(str(out0))["text"])
    assert json.loads((out1 / "meta.json").read_text())["translators"]["en_es"].startswith("sha256:")

    again, out2 = run_augment(tmp_path / "again", inputs, p, cache=tmp_path / "cache")
    assert again["translation_cache"] == {"pivot": {"hits": 21, "misses": 0}, "back": {"hits": 21, "misses": 0},
                                          "corrupt": 0}  # fmt: skip
    assert list(load_from_disk(str(out2))["text"]) == texts
    assert (out2 / "meta.json").read_bytes() == (out1 / "meta.json").read_bytes()

    entry = sorted((tmp_path / "cache").rglob("*.json"))[0]
    entry.write_text('{"key": {"model": "tru')  # a torn write: ignored, never trusted
    with pytest.warns(UserWarning, match="corrupt translation cache entry"):
        third, out3 = run_augment(tmp_path / "third", inputs, p, cache=tmp_path / "cache")
    assert third["translation_cache"]["corrupt"] == 1 and list(load_from_disk(str(out3))["text"]) == texts
    assert json.loads(entry.read_text())["translations"]  # rewritten whole


def test_unreachable_hub_name_fails_with_one_message(tmp_path, inputs, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "no-such-org/opus-mt-made-up-xx-yy"
    p = dataclasses.replace(LENIENT, translators=A.Translators(name, str(inputs[1] / "es-en")))
    with pytest.raises(SystemExit):
        run_augment(tmp_path, inputs, p)
    err = capsys.readouterr().err
    assert "augment.translators.en_es" in err and name in err and "HF_HUB_OFFLINE" in err
    assert "hf download" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_forced_bos_token_names_its_key(tmp_path, inputs, capsys):
    p = dataclasses.replace(LENIENT, translators=local(inputs[1], forced_bos_token="zzz_Made"))
    with pytest.raises(SystemExit):
        run_augment(tmp_path, inputs, p)
    assert "augment.translators.en_es.forced_bos_token" in capsys.readouterr().err


def test_a_local_translator_must_be_a_dep_of_the_stage(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  augment:\n    deps: [stages/augment.py, models/opus]\n")
    p = dataclasses.replace(P, translators=A.Translators("models/opus/en-es", "models/other/es-en"))
    problems = A.undeclared_models(p, tmp_path / "dvc.yaml")
    assert len(problems) == 1 and "augment.translators.es_en" in problems[0]
    assert A.undeclared_models(dataclasses.replace(P, translators=A.Translators("a/b", "c/d"))) == []


@pytest.fixture(scope="module")
def scorers(inputs, tmp_path_factory) -> tuple[Path, Path]:
    """(causal, masked): a tiny GPT-2 and a tiny BERT built from configs, saved with the translators' tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    tmp = tmp_path_factory.mktemp("scorers")
    tok = AutoTokenizer.from_pretrained(inputs[1] / "es-en")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, n_positions=64)).save_pretrained(
        tmp / "causal"
    )
    BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp / "masked")
    for name in ("causal", "masked"):
        tok.save_pretrained(tmp / name)
    return tmp / "causal", tmp / "masked"


def test_perplexity_is_the_models_loss_whatever_the_batch(scorers):
    from transformers import AutoModelForCausalLM

    p = dataclasses.replace(P, fluency_model=str(scorers[0]), max_perplexity_ratio=2.0)
    scorer = A.load_scorer(p, Path("unused"))
    texts = [
        "In the beginning God created the heavens and the earth.",
        "Jesus wept.",
        "",
        "And God said, “Let there be light.”",
    ]
    batched = A.perplexities(scorer, texts, max_length=24, batch_size=4)
    alone = [A.perplexities(scorer, [t], max_length=24, batch_size=1)[0] for t in texts]
    assert batched == pytest.approx(alone, rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(scorers[0])
    ids = scorer.tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    eos = scorer.tokenizer.eos_token_id  # no bos: eos opens the text, as GPT-2's does
    seq = torch.tensor([[eos, *ids, eos]])
    loss = model(input_ids=seq, labels=seq).loss.item()  # HF's own mean next-token loss
    assert batched[1] == pytest.approx(torch.exp(torch.tensor(loss)).item(), rel=1e-5)


def test_fluency_scored_end_to_end_and_a_masked_model_is_skipped_and_said(tmp_path, inputs, scorers, capsys):
    from datasets import load_from_disk

    p = dataclasses.replace(
        LENIENT, num_paraphrases=3, keep_per_verse=2, fluency_model="pipeline", max_perplexity_ratio=1.0
    )  # fmt: skip  (untrained scorer: every ratio is near 1)
    metrics = A.run(p, *inputs, tmp_path / "out", tmp_path / "augment.json", cache=None, pretrain=scorers[0])
    assert metrics["kept"] + sum(metrics["drops"].values()) == metrics["generated"] == 63
    assert metrics["drops"]["not_fluent"] > 0 and metrics["kept_per_label"]
    fluency = metrics["fluency"]
    assert fluency["model"].startswith("sha256:") and fluency["source_median"] > 1
    samples = [json.loads(line) for line in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    kept = [s for s in samples if s["status"] == "kept"]
    assert kept and all(s["perplexity_ratio"] <= 1.0 for s in kept)
    assert all(s["perplexity_ratio"] > 1.0 for s in samples if s.get("reason") == "not_fluent")
    aug = load_from_disk(str(tmp_path / "out"))
    assert max(Counter(aug["source_text"]).values()) <= 2

    masked = A.run(p, *inputs, tmp_path / "m", tmp_path / "m.json", cache=None, pretrain=scorers[1])
    assert "masked LM" in masked["fluency"]["skipped"] and "not_fluent" not in masked["drops"]
    assert "fluency not scored" in capsys.readouterr().out


def test_fluency_model_errors_name_the_key(tmp_path, inputs, capsys):
    p = dataclasses.replace(LENIENT, fluency_model="pipeline", max_perplexity_ratio=2.0)
    with pytest.raises(SystemExit):
        A.run(p, *inputs, tmp_path / "out", tmp_path / "a.json", cache=None, pretrain=tmp_path / "no-pretrain")
    err = capsys.readouterr().err
    assert "augment.fluency_model" in err and "stages.pretrain" in err and not (tmp_path / "out").exists()
    bad = dataclasses.replace(p, fluency_model=str(inputs[1] / "es-en"))  # a translator, not a causal LM
    with pytest.raises(SystemExit):
        A.run(bad, *inputs, tmp_path / "out", tmp_path / "a.json", cache=None)
    assert "augment.fluency_model" in capsys.readouterr().err
    with pytest.raises(Exception, match="needs a fluency_model"):
        from stages.common import from_dict

        from_dict(A.AugmentParams, {**dataclasses.asdict(P), "max_perplexity_ratio": 2.0}, "augment")


def test_a_local_fluency_model_must_be_a_dep_of_the_stage(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  augment:\n    deps: [stages/augment.py, models/lm]\n")
    p = dataclasses.replace(P, fluency_model="./models/other-lm")
    problems = A.undeclared_models(p, tmp_path / "dvc.yaml")
    assert len(problems) == 1 and "augment.fluency_model" in problems[0] and "./models/other-lm" in problems[0]
    assert A.undeclared_models(dataclasses.replace(P, fluency_model="./models/lm"), tmp_path / "dvc.yaml") == []
    assert A.undeclared_models(dataclasses.replace(P, fluency_model="pipeline"), tmp_path / "dvc.yaml") == []
