"""tokenize: round trip, parity with the saved transformers tokenizer, packing loses no token."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from stages.tokenize import pack, split_documents, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "In the beginning, God created the heavens and the earth.\nThe earth was formless and empty.",
    "Jesus said to them, “Come and see.” They came and saw where he was staying.",
] * 50


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


def test_pack_loses_and_duplicates_no_token():
    seqs = [list(range(i, i + n)) for i, n in enumerate([5, 1, 17, 3, 9])]
    blocks = pack(seqs, 4, eos_id=-1)
    stream = [t for s in seqs for t in (*s, -1)]
    assert all(len(b) == 4 for b in blocks)
    assert [t for b in blocks for t in b] == stream[: len(blocks) * 4]  # in order, nothing lost but the tail
    assert len(stream) - len(blocks) * 4 < 4


def test_document_split_is_disjoint_and_seeded():
    train, val = split_documents(100, 0.1, seed=1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100 and len(val) == 10
    assert split_documents(100, 0.1, seed=1) == (train, val) != split_documents(100, 0.1, seed=2)
