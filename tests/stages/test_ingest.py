"""ingest: the chapter split leaks nothing, the genre map is complete, the output is deterministic."""

import dataclasses
import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from stages.common import load_params
from stages.ingest import BOOK_GENRE, GENRES, LABELS, IngestParams, read_raw, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    p = load_params("ingest", IngestParams, ROOT / "params.yaml")
    counts = run(p, raw=ROOT / "data/raw", out=out / "1_ingest", metrics_path=out / "ingest.json")
    return out / "1_ingest", p, counts


def test_genre_map_covers_the_66_books_with_7_classes():
    books = {r["book"] for r in read_raw(ROOT / "data/raw/kjv.jsonl.gz")}
    assert books == set(BOOK_GENRE) and len(books) == 66
    assert LABELS == list(GENRES) and len(LABELS) == 7


def test_heldout_chapters_appear_nowhere_in_training_data(ingested):
    out, p, _ = ingested
    split = json.loads((out / "splits.json").read_text())
    heldout = {ch for ch, s in split.items() if s != "train"}
    assert heldout, "no held-out chapters"
    corpus = load_from_disk(str(out / "corpus"))
    assert {f"{b}.{c}" for b, c in zip(corpus["book"], corpus["chapter"], strict=True)} & heldout == set()
    assert set(corpus["translation"]) == set(p.corpus_translations)  # every translation checked, not just one
    parallel = load_from_disk(str(out / "parallel"))
    for name in ("train", "validation"):
        chapters = {f"{b}.{c}" for b, c in zip(parallel[name]["book"], parallel[name]["chapter"], strict=True)}
        assert chapters & heldout == set(), name
    task = load_from_disk(str(out / "task"))
    for name in ("train", "pool"):
        assert {f"{b}.{c}" for b, c in zip(task[name]["book"], task[name]["chapter"], strict=True)} & heldout == set()
    for name in ("validation", "test"):
        assert {split[f"{b}.{c}"] for b, c in zip(task[name]["book"], task[name]["chapter"], strict=True)} == {name}
    # held-out text itself, in any translation, is absent from the corpus, unless the same verse also stands in a
    # training chapter (the Bible repeats some verses word for word: Exodus 26 and 36)
    rows = [r for name in p.corpus_translations for r in read_raw(ROOT / f"data/raw/{name}.jsonl.gz")]
    train_texts = {r["text"] for r in rows if split[f"{r['book']}.{r['chapter']}"] == "train"}
    heldout_texts = {r["text"] for r in rows if split[f"{r['book']}.{r['chapter']}"] != "train"}
    corpus_lines = {line for doc in corpus["text"] for line in doc.split("\n")}
    assert heldout_texts & corpus_lines <= train_texts
    assert len(heldout_texts - train_texts) > 0.95 * len(heldout_texts)
    # and no evaluation verse repeats a training verse
    train_verses = set(task["pool"]["text"])
    for name in ("validation", "test"):
        assert set(task[name]["text"]).isdisjoint(train_verses), name


def test_task_is_small_balanced_and_labeled_by_book_genre(ingested):
    out, p, counts = ingested
    task = load_from_disk(str(out / "task"))
    assert task["train"].features["label"].names == LABELS
    assert len(task["train"]) == 7 * p.train_per_class
    for row in task["test"]:
        assert LABELS[row["label"]] == BOOK_GENRE[row["book"]]
    assert set(task["train"]["label"]) == set(range(7))
    assert counts["parallel"]["validation"] > 0


def test_split_is_deterministic_and_follows_the_seed(tmp_path, ingested):
    out, p, _ = ingested
    again = run(p, raw=ROOT / "data/raw", out=tmp_path / "a", metrics_path=tmp_path / "a.json")
    assert (tmp_path / "a/splits.json").read_text() == (out / "splits.json").read_text()
    assert again == ingested[2]
    run(
        dataclasses.replace(p, seed=p.seed + 1),
        raw=ROOT / "data/raw",
        out=tmp_path / "b",
        metrics_path=tmp_path / "b.json",
    )
    assert (tmp_path / "b/splits.json").read_text() != (out / "splits.json").read_text()


def test_corrupt_raw_file_fails_naming_the_file(tmp_path):
    bad = tmp_path / "web.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(SystemExit):
        read_raw(bad)
