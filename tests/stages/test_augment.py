"""augment: each filter drops with its reason on literal pairs. Apertium (real, installed): one verse in, one out
under markup, newlines, empty and 5,000-character verses; one paraphrase per pivot through the gate; a rerun reads
every translation from the cache; its versions are recorded; a user's task without a parallel corpus is
paraphrased; a missing mode or an unknown pivot fails with one message. The pipeline's translators (tiny ones):
labels are kept, the output has the task's features (even when empty), metrics add up, and a rerun repeats;
translators given as local paths give the pipeline's output; an unreachable hub name fails with one message naming
the params key."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from stages import apertium
from stages import augment as A
from stages.common import ParamsError, load_params, write_json
from stages.ingest import IngestParams
from stages.ingest import run as ingest
from stages.translate import TranslateParams
from stages.translate import run as translate

ROOT = Path(__file__).resolve().parents[2]

P = A.AugmentParams(
    seed=0, threads=0, num_paraphrases=2, pivot_beams=1, top_k=20, top_p=0.9, temperature=1.0, max_length=24,
    batch_size=16, min_length_ratio=0.5, max_length_ratio=1.6, min_stopword_ratio=0.2, min_chrf=25.0, max_chrf=90.0,
    samples=3, drop_repetitive=True, translators="pipeline",
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
def ingested(tmp_path_factory) -> Path:
    """data/1_ingest from the bundled raw data, the task cut to 3 verses per genre."""
    tmp = tmp_path_factory.mktemp("ingest")
    p = dataclasses.replace(
        load_params("ingest", IngestParams, ROOT / "params.yaml"), train_per_class=3, eval_per_class=3
    )
    ingest(p, ROOT / "data/raw", tmp / "1_ingest", tmp / "ingest.json")
    return tmp / "1_ingest"


@pytest.fixture(scope="module")
def inputs(ingested, tmp_path_factory) -> tuple[Path, Path]:
    """(task, translators): the real task cut to 3 verses per genre, and tiny translators trained a few steps."""
    from datasets import DatasetDict, load_from_disk

    tmp = tmp_path_factory.mktemp("augment")
    full = load_from_disk(str(ingested / "parallel"))
    DatasetDict(
        {"train": full["train"].select(range(200)), "validation": full["validation"].select(range(4))}
    ).save_to_disk(str(tmp / "parallel"))
    tiny = TranslateParams(
        seed=0, threads=0, vocab_size=300, min_frequency=2, max_length=24, d_model=32, layers=1, heads=2, ffn_dim=64,
        dropout=0.0, init_std=0.05, max_steps=4, batch_size=8, lr=1e-3, warmup_steps=1, weight_decay=0.0,
        label_smoothing=0.1, grad_clip=1.0, checkpoint_every=0, log_every=10, eval_pairs=2, num_beams=1,
        no_repeat_ngram_size=0, batch_size_eval=4,
    )  # fmt: skip
    translate(tiny, tmp / "parallel", tmp / "5_translate", tmp / "translate.json", tmp / "checkpoints", tmp / "t.md")
    return ingested / "task", tmp / "5_translate"


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
    from stages.common import from_dict

    fields = {k: v for k, v in dataclasses.asdict(P).items() if k != "translators"}
    p = from_dict(
        A.AugmentParams, {**fields, "translators": {"en_es": "a/b", "es_en": {"model": "c", "prefix": "x"}}}, "t"
    )
    assert p.translators == A.Translators("a/b", A.Translator("c", prefix="x"))
    assert from_dict(A.AugmentParams, fields, "t").translators == "apertium"
    assert from_dict(A.AugmentParams, {**fields, "translators": "pipeline"}, "t").translators == "pipeline"
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
    ap = dataclasses.replace(P, translators="apertium")
    problems = A.undeclared_models(dataclasses.replace(ap, fluency_model="./models/other-lm"), tmp_path / "dvc.yaml")
    assert len(problems) == 1 and "augment.fluency_model" in problems[0] and "./models/other-lm" in problems[0]
    assert A.undeclared_models(dataclasses.replace(ap, fluency_model="./models/lm"), tmp_path / "dvc.yaml") == []
    assert A.undeclared_models(dataclasses.replace(ap, fluency_model="pipeline"), tmp_path / "dvc.yaml") == []


# --- Apertium (the real one, as installed: `make apertium`) -------------------------------------------------------

AP = dataclasses.replace(P, translators="apertium", drop_repetitive=False)
NASTY = [
    "In the beginning, God created the heavens and the earth.",
    "He said,\n“Go up.”\r\nAnd he went.",  # newlines inside a verse
    "brackets [a] and {b}, a ^caret$ pair, a *star* and a #hash, an @at, <angle> a/b and back\\slash.",
    "",  # an empty verse
    "  \n\t ",  # blank
    "NUL\x00inside and a \\[ escaped bracket",
    "Jesus wept.",
]
LONG = " ".join(["The king went home and ate bread with his servants, and he was glad."] * 74)  # 5,105 characters


@pytest.mark.parametrize("mode", ["eng-spa", "en-eo"])
def test_one_verse_in_one_out_whatever_the_verse_holds(mode):
    batch = apertium.translate([*NASTY, LONG], mode)
    alone = [apertium.translate([t], mode)[0] for t in NASTY]
    assert len(batch) == len(NASTY) + 1 and batch[: len(NASTY)] == alone  # no verse shifts or leaks into another
    assert batch[3] == batch[4] == "" and all(batch[i] for i in (0, 1, 2, 5, 6, 7))
    assert not any(c in t for t in batch for c in "\n\r\x00")
    if mode == "eng-spa":
        assert batch[6] == "Jesus lloró." and all(c in batch[2] for c in "[]{}^$<>/@#")
        assert "*" in batch[2] and "\\" in batch[2] and "[" in batch[5]  # the verse's own characters come back
    assert len(LONG) > 5000 and len(batch[-1]) > 0.5 * len(LONG)  # translated whole, in the same call


def test_a_segment_lost_or_moved_fails_loudly(tmp_path, monkeypatch):
    """Fake modes (sed in the mode pipeline's place, as apertium-wblank-mode runs it) that lose or renumber a verse."""
    (tmp_path / "modes").mkdir()
    (tmp_path / "modes/id-id.mode").write_text("sed -e 's/@@//'\n")
    (tmp_path / "modes/dr-op.mode").write_text("sed -e '/^\\[1\\]/d'\n")
    (tmp_path / "modes/re-no.mode").write_text("sed -e 's/^\\[1\\]/[7]/'\n")
    monkeypatch.setenv("APERTIUM_DATADIR", str(tmp_path))
    assert apertium.translate(["a [b]", "c\nd", "", "e"], "id-id") == ["a [b]", "c d", "", "e"]
    for mode in ("dr-op", "re-no"):
        with pytest.raises(RuntimeError, match=f"apertium {mode}: [23] segments came back for 3 sent, or out of"):
            apertium.translate(["a", "b", "c"], mode)


def test_helpers_on_literals():
    assert apertium.clean("The king\nwent home. ") == "The king went home."
    assert apertium.unescape(apertium.escape("a [b] ^c$ \\ /")) == "a [b] ^c$ \\ /"
    assert apertium.unescape("a  b\\[c\\] ") == "a b[c]"
    assert apertium.match_case("but he said.", "But he said.") == "But he said."
    assert apertium.match_case("but he said.", "but he said.") == "but he said."


@pytest.fixture
def rows() -> list[dict]:
    """Verses as the task has them, nasty ones among them, in one genre."""
    texts = ["So Esau returned that day on his way to Seir.", *NASTY, LONG]
    return [{"text": t, "label": 0, "book": "Genesis", "chapter": 1, "verse": i + 1} for i, t in enumerate(texts)]


def test_one_paraphrase_per_pivot_through_the_gate(rows, tmp_path):
    kept, dropped, stats = A.paraphrase(rows, AP, cache=tmp_path / "cache")
    pivots = list(apertium.PIVOTS)
    assert stats["generated"] == 4 * len(rows) and stats["kept"] + len(dropped) == stats["generated"]
    assert stats["kept"] + sum(stats["drops"].values()) == stats["generated"] == len(kept) + len(dropped)
    by_verse = Counter((c["source_text"], c["pivot"]) for c in kept + [c for _, c in dropped])
    assert set(by_verse.values()) == {1} and len(by_verse) == 4 * len(rows)  # each verse once through each pivot
    assert {c["pivot"] for c in kept} == set(pivots) and set(stats["kept_per_pivot"]) == set(pivots)
    reasons = {(c["source_text"], c["pivot"]): r for r, c in dropped}
    assert all(reasons[(t, p)] == "empty_source" for t in ("", "  \n\t ") for p in pivots)
    assert stats["drops"]["empty_source"] == 8
    assert reasons[(rows[0]["text"], "epo")] == "identical_to_source"  # Esperanto gives the verse back word for word
    texts = {c["text"] for c in kept}
    assert len(texts) == len(kept)  # duplicates are dropped
    source_of = {c["text"]: c["source_text"] for c in kept}
    assert all(not {"*", "#", "@"} & set(t) for t in texts if not {"*", "#", "@"} & set(source_of[t]))
    assert any(c["source_text"] == LONG for c in kept + [c for _, c in dropped])  # not crashed: kept or dropped
    misses = {"hits": 0, "misses": 4 * 7}  # 7 verses with text, 4 pivots
    assert stats["translation_cache"] == {"pivot": misses, "back": misses, "corrupt": 0}
    assert stats["record"] == {"apertium": apertium.versions(pivots)}


def test_apertium_end_to_end_rerun_reads_the_cache_and_records_the_versions(tmp_path, ingested):
    import subprocess

    from datasets import load_from_disk

    task = ingested / "task"
    p = dataclasses.replace(AP, samples=4)
    first = A.run(p, task, tmp_path / "none", tmp_path / "a", tmp_path / "a.json", cache=tmp_path / "cache",
                  report_path=tmp_path / "augment.md")  # fmt: skip
    n = len(load_from_disk(str(task))["train"])
    report = (tmp_path / "augment.md").read_text()  # the readable report: counts, then the seeded random kept pairs
    assert f"- Verses: {n}; paraphrases generated: {4 * n}; kept: {first['kept']}." in report
    assert "## 4 kept pairs, drawn at random (seed augment.seed = 0)" in report
    assert (
        report.count("\n| spa |") + report.count("\n| cat |") + report.count("\n| glg |") + report.count("\n| epo |")
        == 4
    )
    assert (
        first["generated"] == 4 * n and first["kept"] > 2 * n and set(first["kept_per_pivot"]) == set(apertium.PIVOTS)
    )
    assert first["translation_cache"]["back"] == {"hits": 0, "misses": 4 * n} and first["sentences_per_second"] > 0
    again = A.run(p, task, tmp_path / "none", tmp_path / "b", tmp_path / "b.json", cache=tmp_path / "cache")
    assert again["translation_cache"] == {"pivot": {"hits": 4 * n, "misses": 0}, "back": {"hits": 4 * n, "misses": 0},
                                          "corrupt": 0}  # fmt: skip
    for name in ("meta.json", "samples.jsonl", "data-00000-of-00001.arrow"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    info = json.loads((tmp_path / "a/meta.json").read_text())
    for package in ("apertium", "lttoolbox", *(pkg for _, _, pkg in apertium.PIVOTS.values())):
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        assert info["apertium"][package] == version.stdout.strip() != "", package
    assert info["params"]["apertium"]["pivots"] == list(apertium.PIVOTS)
    samples = [json.loads(line) for line in (tmp_path / "a/samples.jsonl").read_text().splitlines()]
    assert sum(s["status"] == "kept" for s in samples) == 4 and all("pivot" in s for s in samples)


def test_a_new_apertium_version_retranslates(tmp_path, rows, monkeypatch):
    A.paraphrase(rows[:2], AP, cache=tmp_path / "cache")
    real = apertium.versions
    monkeypatch.setattr(apertium, "versions", lambda pivots: {**real(pivots), "apertium-eng-spa": "9.9.9-1"})
    _, _, stats = A.paraphrase(rows[:2], AP, cache=tmp_path / "cache")
    assert stats["translation_cache"]["pivot"] == {"hits": 3 * 2, "misses": 2}  # spa's two verses only


def test_a_users_task_without_a_parallel_corpus_is_paraphrased(tmp_path):
    """ingest.source: own with no ingest.parallel: translate skips (its meta.json says so), Apertium paraphrases."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

    reviews = [
        "This kettle works perfectly and it boils water quickly.",
        "The lamp broke after two days of use.",
        "I would buy this backpack again, it is sturdy and well made.",
        "The toaster is loud and hard to clean.",
    ]
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                         "book": Value("string"), "chapter": Value("int64"), "verse": Value("int64")})  # fmt: skip
    train = Dataset.from_dict({"text": reviews, "label": [1, 0, 1, 0], "book": ["task"] * 4, "chapter": [1, 2, 3, 4],
                               "verse": [1] * 4}, features=features)  # fmt: skip
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "task"))
    write_json({"counts": {"skipped": "no parallel corpus"}}, tmp_path / "5_translate/meta.json")
    m = A.run(AP, tmp_path / "task", tmp_path / "5_translate", tmp_path / "out", tmp_path / "m.json", cache=None)
    aug = load_from_disk(str(tmp_path / "out"))
    assert "skipped" not in m and m["kept"] == len(aug) > 4 and m["kept_per_label"]["negative"] > 0
    assert aug.features["label"].names == ["negative", "positive"]
    label_of = dict(zip(reviews, [1, 0, 1, 0], strict=True))
    assert all(label_of[s] == lab for s, lab in zip(aug["source_text"], aug["label"], strict=True))
    pipeline = A.run(P, tmp_path / "task", tmp_path / "5_translate", tmp_path / "o2", tmp_path / "m2.json", cache=None)
    assert "no parallel corpus" in pipeline["skipped"] and pipeline["kept"] == 0  # the pipeline's: nothing to use


def test_a_missing_mode_fails_with_the_install_command_and_the_fallback(tmp_path, monkeypatch, capsys):
    """A data folder that holds Spanish only (as if apertium-eng-cat were not installed): the real check, no mock."""
    (tmp_path / "modes").mkdir()
    for mode in ("eng-spa", "spa-eng"):
        (tmp_path / f"modes/{mode}.mode").write_text((apertium.datadir() / f"modes/{mode}.mode").read_text())
    monkeypatch.setenv("APERTIUM_DATADIR", str(tmp_path))
    rows = [{"text": "Jesus wept.", "label": 0, "book": "John", "chapter": 11, "verse": 35}]
    kept, dropped, _ = A.paraphrase(rows, dataclasses.replace(AP, apertium=A.ApertiumParams(["spa"])), cache=None)
    assert [c["text"] for c in kept + [c for _, c in dropped]] == ["Jesus cried."]  # Spanish is there
    with pytest.raises(SystemExit):
        A.run(AP, Path("unused"), out=tmp_path / "out", metrics_path=tmp_path / "m.json", cache=None)
    err = capsys.readouterr().err
    assert "augment.apertium.pivots" in err and "cat (eng-cat/cat-eng, package apertium-eng-cat)" in err
    assert "spa (" not in err and apertium.INSTALL in err and "augment.translators: pipeline" in err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err and not (tmp_path / "out").exists()

    monkeypatch.setattr(apertium.shutil, "which", lambda name: None)  # no Apertium at all
    assert "spa (eng-spa/spa-eng" in apertium.missing(["spa"])


def test_an_unknown_pivot_is_a_params_error_naming_the_key_and_the_known_names(tmp_path):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["augment"]["apertium"]["pivots"] = ["spa", "klingon"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(
        ParamsError, match=r"augment\.apertium\.pivots: .*klingon.*known: spa \(eng-spa/spa-eng\), cat"
    ):
        load_params("augment", A.AugmentParams, tmp_path / "params.yaml")


def test_pipeline_translators_need_the_translate_stage_and_a_dep(tmp_path, ingested, capsys):
    (tmp_path / "dvc.yaml").write_text("stages:\n  augment:\n    deps: [stages/augment.py]\n")
    problems = A.undeclared_models(P, tmp_path / "dvc.yaml")
    assert problems == [A.PIPELINE_NEEDS] and "dvc repro study/dvc.yaml:translate" in problems[0]
    assert "add `models/5_translate` to the augment stage's deps" in problems[0]
    (tmp_path / "dvc.yaml").write_text("stages:\n  augment:\n    deps: [stages/augment.py, models/5_translate]\n")
    assert A.undeclared_models(P, tmp_path / "dvc.yaml") == []
    with pytest.raises(SystemExit):
        A.run(P, ingested / "task", tmp_path / "no-models", tmp_path / "out", tmp_path / "m.json", cache=None)
    assert "dvc repro study/dvc.yaml:translate" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_default_pipeline_leaves_translate_to_the_study():
    import yaml

    main, study = (yaml.safe_load((ROOT / f).read_text())["stages"] for f in ("dvc.yaml", "study/dvc.yaml"))
    assert "translate" not in main and "models/5_translate" not in main["augment"]["deps"]
    assert "stages/apertium.py" in main["augment"]["deps"] and "stages/apertium.py" in study["translate"]["deps"]
    assert (
        study["translate"]["wdir"] == ".."
        and load_params("augment", A.AugmentParams, ROOT / "params.yaml").translators == "apertium"
    )
