"""tokenize: round trip, parity with the saved transformers tokenizer, packing loses no token, streaming packs what
packing the whole corpus in memory would, byte for byte the same output twice."""

import itertools
import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from stages.tokenize import TokenizeParams, encode_task, pack, pack_stream, run, split_documents, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "In the beginning, God created the heavens and the earth.\nThe earth was formless and empty.",
    "Jesus said to them, “Come and see.” They came and saw where he was staying.",
] * 50


SPECIAL = {"eos": "<|endoftext|>", "pad": "<pad>", "mask": "<mask>"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400, min_frequency=2)


@pytest.mark.parametrize(
    "text", ["", "a", "God created", "naïve café — “quoted” ‘x’ 日本語 🙂", "\n\n  spaced  \t", "x" * 5000]
)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_saved_tokenizer_matches(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS[:2] + ["unseen words: Zerubbabel, Mahershalalhashbaz"]:
        assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert (loaded.eos_token, loaded.pad_token) == ("<|endoftext|>", "<pad>")
    assert len(loaded) == len(tokenizer) <= 400


def test_pack_textbook_case():
    assert pack([[1, 2], [3]], 2, eos_id=0) == [[1, 2], [0, 3]]


def test_pack_keeps_the_last_eos_when_it_completes_a_block():
    assert pack([[1, 2, 3]], 2, eos_id=0) == [[1, 2], [3, 0]]
    assert pack([[1, 2, 3]], 4, eos_id=0) == [[1, 2, 3, 0]]
    assert pack([[], [5]], 2, eos_id=0) == [[0, 5]]  # an empty document still gets its EOS
    assert pack([], 2, eos_id=0) == pack([[1]], 4, eos_id=0) == []


def test_pack_loses_and_duplicates_no_token():
    seqs = [list(range(i, i + n)) for i, n in enumerate([5, 1, 17, 3, 9])]
    blocks = pack(seqs, 4, eos_id=-1)
    stream = [t for s in seqs for t in (*s, -1)]
    assert all(len(b) == 4 for b in blocks)
    assert [t for b in blocks for t in b] == stream[: len(blocks) * 4]  # in order, nothing lost but the tail
    assert len(stream) - len(blocks) * 4 < 4


def reference_pack(sequences, block_size: int, eos_id: int) -> list[list[int]]:
    """Packing as it was before streaming: the whole token stream in one list, then cut."""
    stream = [t for seq in sequences for t in (*seq, eos_id)]
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def test_pack_stream_matches_packing_the_whole_stream():
    rng = random.Random(0)
    for _ in range(200):
        seqs = [[rng.randrange(1, 99) for _ in range(rng.choice([0, 1, 2, 7, 30]))] for _ in range(rng.randrange(9))]
        block = rng.choice([1, 2, 3, 8, 64])
        expected = reference_pack(seqs, block, eos_id=0)
        assert list(pack_stream(iter(seqs), block, eos_id=0)) == pack(seqs, block, eos_id=0) == expected


def test_pack_stream_yields_blocks_before_the_input_ends():
    """An endless input still gives blocks: nothing waits for the whole corpus."""
    endless = itertools.repeat([1, 2, 3])
    assert list(itertools.islice(pack_stream(endless, 3, eos_id=0), 4)) == [[1, 2, 3], [0, 1, 2], [3, 0, 1], [2, 3, 0]]


def test_document_split_is_disjoint_and_seeded():
    train, val = split_documents(100, 0.1, seed=1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100 and len(val) == 10
    assert split_documents(100, 0.1, seed=1) == (train, val) != split_documents(100, 0.1, seed=2)


# --- The tokenizer trained on the bundled Bibles: round trip, parity, and run()'s blocks -----------------------------

UNICODE = {
    "accents": "naïve façade, résumé; Ångström, Øresund, Łódź, São Paulo, Zürich",
    "spanish": "El niño soñó con el año nuevo: ¿Señor, por qué? ¡Añádelo! ÑANDÚ",
    "cjk": "太初有道，道与神同在。はじめに言があった。태초에 말씀이 계시니라",
    "emoji": "🙂 👨‍👩‍👧‍👦 🇪🇸🇬🇧 👍🏽 ✝️ 🕊",
    "combining": "e\u0301 n\u0303 a\u0308\u0304 Z\u0324\u0354\u0367\u0311\u0313 \u05d1\u05bc\u05b0",  # stacked
    "controls": "tab\there\r\nnbsp\u00a0zwsp\u200bbom\ufeffend\x00",
    "special_lookalikes": "<|endoftext <pad > <mask",
}


def bible_verses(name: str, n: int) -> list[str]:
    from stages.ingest import read_raw

    return [r["text"] for r in read_raw(ROOT / "data" / "raw" / f"{name}.jsonl.gz")[:n]]


@pytest.fixture(scope="module")
def verses() -> list[str]:
    """A few hundred English and Spanish verses of the bundled data (Genesis 1-10 in each)."""
    return bible_verses("web", 250) + bible_verses("sparv", 250)


@pytest.fixture(scope="module")
def bible_tokenizer(verses):
    return train_tokenizer(verses, vocab_size=1000, min_frequency=2)


def long_text(verses: list[str]) -> str:
    text = "\n".join(v + " " + u for v, u in zip(verses, [*UNICODE.values()] * 100, strict=False))
    assert len(text) > 10_000
    return text


@pytest.mark.parametrize("name", UNICODE)
def test_bible_tokenizer_round_trips_unicode(bible_tokenizer, name):
    text = UNICODE[name]
    ids = bible_tokenizer.encode(text, add_special_tokens=False)
    assert bible_tokenizer.decode(ids) == text
    assert bible_tokenizer.unk_token_id not in ids  # byte-level: no character is unknown


def test_bible_tokenizer_round_trips_empty_and_long(bible_tokenizer, verses):
    assert bible_tokenizer.encode("", add_special_tokens=False) == []
    assert bible_tokenizer.decode([]) == ""
    for text in (long_text(verses), "ñ" * 6000, " " * 10_001):  # mixed; one 12,000-byte pre-token; whitespace
        assert bible_tokenizer.decode(bible_tokenizer.encode(text, add_special_tokens=False)) == text


def test_bible_tokenizer_round_trips_every_verse_in_a_batch(bible_tokenizer, verses):
    """The stage's own call (a batch, no special tokens) on the training verses, each decoded back exactly."""
    ids = bible_tokenizer(verses, add_special_tokens=False)["input_ids"]
    assert bible_tokenizer.batch_decode(ids) == verses
    assert sum(map(len, ids)) < sum(len(v.encode()) for v in verses) / 2  # merges were learned: < 0.5 token/byte


def test_saved_bible_tokenizer_encodes_as_the_one_in_memory(bible_tokenizer, verses, tmp_path):
    """save_pretrained + AutoTokenizer == the in-memory tokenizer == raw `tokenizers`, token for token."""
    texts = [*verses[::25], *UNICODE.values(), "", long_text(verses)]
    bible_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = bible_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert loaded(texts, add_special_tokens=False)["input_ids"] == ids
    assert [e.ids for e in bible_tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)] == ids
    # the task's call: truncated at max_length
    cut = dict(add_special_tokens=False, truncation=True, max_length=16)
    assert loaded(texts, **cut)["input_ids"] == bible_tokenizer(texts, **cut)["input_ids"] == [x[:16] for x in ids]
    assert loaded.batch_decode(ids) == texts
    assert loaded.get_vocab() == bible_tokenizer.get_vocab()
    assert [loaded.eos_token_id, loaded.pad_token_id, loaded.mask_token_id] == [0, 1, 2]


def test_run_packs_every_token_in_order_and_drops_only_a_short_tail(verses, tmp_path):
    """run(): each split's blocks, end to end, are its documents' tokens + EOS, in order, less a tail < block_size."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from stages.tokenize import TokenizeParams, run

    docs = ["\n".join(verses[i : i + 20]) for i in range(0, len(verses), 20)] + [*UNICODE.values(), ""]
    Dataset.from_dict({"id": [f"d{i}" for i in range(len(docs))], "text": docs}).save_to_disk(tmp_path / "corpus")
    task = Dataset.from_dict({"text": verses[:7], "label": list(range(7))})
    DatasetDict({"train": task, "test": task}).save_to_disk(tmp_path / "task")
    p = TokenizeParams(tokenizer="train", special_tokens=SPECIAL, vocab_size=600, min_frequency=2, block_size=64,
                       max_length=16, val_fraction=0.2, seed=3, num_proc=1)  # fmt: skip
    metrics = run(p, tmp_path / "corpus", tmp_path / "task", tmp_path / "out", tmp_path / "metrics.json")

    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    eos, block = tok.eos_token_id, p.block_size
    blocks = load_from_disk(str(tmp_path / "out" / "blocks"))
    stream_tokens = 0
    for name, idx in zip(("train", "validation"), split_documents(len(docs), p.val_fraction, p.seed), strict=True):
        stream = [t for i in idx for t in (*tok.encode(docs[i], add_special_tokens=False), eos)]
        packed = [t for b in blocks[name]["input_ids"] for t in b]
        assert {len(b) for b in blocks[name]["input_ids"]} == {block}
        assert packed == stream[: len(packed)]  # in order; nothing lost, nothing duplicated ...
        assert 0 <= len(stream) - len(packed) < block  # ... but the tail that does not fill a block
        assert len(packed) // block == metrics["blocks"][name]
        complete = tok.decode(packed).split(tok.eos_token)[:-1]
        assert complete == [docs[i] for i in idx][: len(complete)]  # the documents come back, text for text
        stream_tokens += len(stream)
    assert stream_tokens == metrics["corpus_tokens"] + len(docs)  # one EOS per document, empty ones included


def test_task_truncated_counts_only_verses_that_were_cut(bible_tokenizer, verses):
    """A verse of exactly max_length tokens fits: it is neither cut nor counted; one token more is both."""
    ids = bible_tokenizer(verses[:50], add_special_tokens=False)["input_ids"]
    m = sorted(map(len, ids))[25]  # the length of a middling verse
    exact = next(v for v, x in zip(verses, ids, strict=False) if len(x) == m)
    longer = next(v for v, x in zip(verses, ids, strict=False) if len(x) > m)
    short = next(v for v, x in zip(verses, ids, strict=False) if len(x) < m)
    out = encode_task(bible_tokenizer, [exact, longer, short], m)
    assert out["truncated"] == [False, True, False]
    full = bible_tokenizer([exact, longer, short], add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == [full[0], full[1][:m], full[2]]


def test_run_trains_the_tokenizer_on_train_documents_only(verses, tmp_path, capsys):
    """A word that only the validation documents hold is not learned as a token; in the train documents it is."""
    from datasets import Dataset, DatasetDict

    from stages.tokenize import TokenizeParams, run

    word = " Qzvxjwq"
    docs = ["\n".join(verses[i : i + 20]) for i in range(0, len(verses), 20)]
    p = TokenizeParams(tokenizer="train", special_tokens=SPECIAL, vocab_size=600, min_frequency=2, block_size=64,
                       max_length=16, val_fraction=0.2, seed=3, num_proc=1)  # fmt: skip
    train_idx, val_idx = split_documents(len(docs), p.val_fraction, p.seed)
    task = Dataset.from_dict({"text": verses[:7], "label": list(range(7))})
    DatasetDict({"train": task}).save_to_disk(tmp_path / "task")
    learned = {}
    for held, idx in (("validation", val_idx), ("train", train_idx[: len(val_idx)])):
        texts = [d + word * 200 if i in idx else d for i, d in enumerate(docs)]
        Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / held / "corpus")
        run(p, tmp_path / held / "corpus", tmp_path / "task", tmp_path / held / "out", tmp_path / held / "m.json")
        tok = AutoTokenizer.from_pretrained(tmp_path / held / "out" / "tokenizer")
        learned[held] = len(tok.encode(word, add_special_tokens=False))
    assert learned["train"] == 1  # seen 200 times per document: merged into one token
    assert learned["validation"] >= 4  # only in held-out documents: never merged, spelled out in pieces
    cut = json.loads((tmp_path / "train" / "m.json").read_text())["task_truncated"]
    assert cut["train"] > 0  # verses of more than 16 tokens: counted, and a warning says so
    assert f"warning: {cut} task texts are longer than tokenize.max_length (16 tokens)" in capsys.readouterr().err


def test_tokenizer_trained_on_batches_is_the_one_trained_on_a_list(verses):
    """run() feeds the BPE a generator of batches of documents; it learns what the whole list teaches."""
    docs = ["\n".join(verses[i : i + 20]) for i in range(0, len(verses), 20)]
    batches = (docs[i : i + 3] for i in range(0, len(docs), 3))
    from_list = train_tokenizer(docs, vocab_size=600, min_frequency=2)
    assert train_tokenizer(batches, vocab_size=600, min_frequency=2).backend_tokenizer.to_str() == (
        from_list.backend_tokenizer.to_str()
    )


PARAMS = TokenizeParams(tokenizer="train", special_tokens=SPECIAL, vocab_size=600, min_frequency=2, block_size=64,
                        max_length=16, val_fraction=0.2, seed=3, num_proc=1)  # fmt: skip


def write_inputs(root: Path, docs: list[str], verses: list[str]) -> tuple[Path, Path]:
    """(corpus, task) folders as ingest and clean leave them: the documents, and a small task of 7 verses."""
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"id": [f"d{i}" for i in range(len(docs))], "text": docs}).save_to_disk(root / "corpus")
    task = Dataset.from_dict({"text": verses[:7], "label": list(range(7))})
    DatasetDict({"train": task, "test": task}).save_to_disk(root / "task")
    return root / "corpus", root / "task"


def test_run_streams_exactly_the_blocks_pack_makes_in_memory(verses, tmp_path, monkeypatch):
    """Read 3 documents at a time (BPE, encoding, packing), run()'s blocks are pack() of the whole split's ids; the
    counts are those of the whole corpus in memory; the input folder gets no cache file."""
    from datasets import load_from_disk

    monkeypatch.setattr("stages.tokenize.BATCH", 3)
    docs = ["\n".join(verses[i : i + 20]) for i in range(0, len(verses), 20)] + [*UNICODE.values(), ""]
    corpus, task = write_inputs(tmp_path, docs, verses)
    before = sorted(corpus.rglob("*"))
    metrics = run(PARAMS, corpus, task, tmp_path / "out", tmp_path / "metrics.json")
    assert sorted(corpus.rglob("*")) == before

    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    blocks = load_from_disk(str(tmp_path / "out" / "blocks"))  # as pretrain reads it
    for name, idx in zip(("train", "validation"), split_documents(len(docs), 0.2, seed=3), strict=True):
        assert blocks[name]["input_ids"] == pack([ids[i] for i in idx], 64, tok.eos_token_id)
        assert str(blocks[name].features["input_ids"]) == "List(Value('int32'))"  # as Dataset.from_dict wrote it
    assert metrics["corpus_tokens"] == sum(map(len, ids))
    assert metrics["chars_per_token"] == round(sum(map(len, docs)) / sum(map(len, ids)), 3)
    train_docs = [docs[i] for i in split_documents(len(docs), 0.2, seed=3)[0]]
    assert tok.get_vocab() == train_tokenizer(train_docs, 600, 2, SPECIAL).get_vocab()
    # encoding the task (cut at max_length) leaves no truncation in the saved tokenizer: a raw tokenizers load is whole
    raw = json.loads((tmp_path / "out" / "tokenizer" / "tokenizer.json").read_text())
    assert raw["truncation"] is None and raw["padding"] is None


def test_run_writes_the_same_bytes_twice(verses, tmp_path):
    """Two runs on one input: every output file (tokenizer, blocks, task, meta.json) is byte for byte the same."""
    docs = ["\n".join(verses[i : i + 20]) for i in range(0, len(verses), 20)]
    corpus, task = write_inputs(tmp_path, docs, verses)
    for k in (1, 2):
        run(PARAMS, corpus, task, tmp_path / f"out{k}", tmp_path / f"metrics{k}.json")
    files = {k: sorted(p.relative_to(tmp_path / f"out{k}") for p in (tmp_path / f"out{k}").rglob("*")) for k in (1, 2)}
    assert files[1] == files[2] and Path("blocks/train/data-00000-of-00001.arrow") in files[1]
    for f in files[1]:
        if (tmp_path / "out1" / f).is_file():
            assert (tmp_path / "out1" / f).read_bytes() == (tmp_path / "out2" / f).read_bytes(), f
    assert (tmp_path / "metrics1.json").read_bytes() == (tmp_path / "metrics2.json").read_bytes()


def test_run_refuses_a_corpus_of_one_document_or_too_little_text(verses, tmp_path, capsys):
    corpus, task = write_inputs(tmp_path / "one", verses[:1], verses)
    with pytest.raises(SystemExit):
        run(PARAMS, corpus, task, tmp_path / "out", tmp_path / "m.json")
    assert "1 document(s); tokenize needs at least 2 (one for validation)" in capsys.readouterr().err
    short = ["In the beginning.", "God said.", "Let there be light."]  # one in validation: < 64 tokens
    corpus, task = write_inputs(tmp_path / "short", short, verses)
    with pytest.raises(SystemExit):
        run(PARAMS, corpus, task, tmp_path / "out", tmp_path / "m.json")
    assert "too little text for one 64-token block per split; lower tokenize.block_size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
