"""clean: each filter drops with its reason (literal documents, datatrove's test style)."""

import dataclasses
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from stages.clean import (
    IN,
    METRICS,
    OUT,
    CleanParams,
    clean_documents,
    normalize_whitespace,
    nothing_kept_message,
    run,
    strip_markup,
)
from stages.common import load_params
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[2]
P = load_params("clean", CleanParams, ROOT / "params.yaml")

ENGLISH = (
    "In the beginning, God created the heavens and the earth. The earth was formless and empty.\n"
    "Darkness was on the surface of the deep and God's Spirit was hovering over the surface of the waters.\n"
    "God said, “Let there be light,” and there was light. God saw the light, and saw that it was good."
)


SPANISH = (
    "EN el principio crió Dios los cielos y la tierra. Y la tierra estaba desordenada y vacía, y las tinieblas "
    "estaban sobre la haz del abismo, y el Espíritu de Dios se movía sobre la haz de las aguas."
)


def reasons(*texts, p=P):
    kept, dropped = clean_documents([{"id": str(i), "text": t} for i, t in enumerate(texts)], p)
    return [d["id"] for d in kept], [r for r, _ in dropped]


def test_clean_english_chapter_is_kept_unchanged():
    assert reasons(ENGLISH) == (["0"], [])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("<p> </p>", "empty"),
        ("God said, let there be light.", "too_short"),
        (SPANISH, "not_english"),
        (ENGLISH + "\n" + "§§ 12/34 ## $$ %% @@ 99 || ~~ ^^ ** " * 20, "symbols"),
        ("\n".join(["Click here to subscribe to the newsletter and the offers of the week."] * 6), "repeated_lines"),
    ],
)  # fmt: skip
def test_filter_drops_with_reason(text, reason):
    assert reasons(text)[1] == [reason]


def test_too_long():
    assert reasons(ENGLISH, p=dataclasses.replace(P, max_words=10))[1] == ["too_long"]


def test_exact_duplicates_after_normalisation_are_dropped_once():
    spaced = ENGLISH.replace(" ", "  ").replace("\n", " \n\n")
    assert reasons(ENGLISH, spaced, ENGLISH) == (["0"], ["exact_duplicate", "exact_duplicate"])
    assert reasons(ENGLISH, ENGLISH, p=dataclasses.replace(P, dedup=False))[1] == []


def test_markup_leftovers_are_removed_without_gluing_words():
    assert strip_markup("God<note>a footnote</note>created <w lemma='x'>the</w> earth &amp; sky").split() == [
        "God", "created", "the", "earth", "&", "sky"
    ]  # fmt: skip
    assert normalize_whitespace("  a  b \n\n c \t") == "a b\nc"


def test_a_corpus_emptied_by_cleaning_fails_clearly_and_keeps_the_previous_output(tmp_path):
    """`python -m stages.clean` with filters that drop every document: exit 1 with one paragraph naming the input,
    the drops per reason and the keys to loosen; the previous output and metrics are left byte for byte."""
    docs = [ENGLISH, "God said, let there be light.", "And God saw the light.", SPANISH]
    Dataset.from_list([{"id": str(i), "text": t} for i, t in enumerate(docs)]).save_to_disk(tmp_path / IN)
    run(P, tmp_path / IN, tmp_path / OUT, tmp_path / METRICS)  # the previous, successful run keeps ENGLISH
    before = {f: f.read_bytes() for f in [*(tmp_path / OUT).rglob("*"), tmp_path / METRICS] if f.is_file()}
    params = tiny_params({"clean.max_words": 40})  # ENGLISH has 61 words: now every document is dropped
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stages.clean"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message  # one paragraph, no traceback
    assert message.startswith(f"error: {IN}: cleaning dropped all 4 documents")
    assert "(too_short: 2, too_long: 1, not_english: 1)" in message
    for key in ("clean.min_words", "clean.max_words", "clean.min_stopword_ratio"):
        assert key in message
    assert "clean.dedup" not in message and "clean.max_symbol_ratio" not in message  # no reason to loosen those
    after = {f: f.read_bytes() for f in [*(tmp_path / OUT).rglob("*"), tmp_path / METRICS] if f.is_file()}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["1_ingest", "2_clean"]  # no temp folder left


def test_nothing_kept_message_names_no_key_where_params_cannot_help():
    empty = nothing_kept_message(IN, OUT, Counter({"empty": 2}))
    assert "nothing in params.yaml keeps them" in empty and "no text left after normalisation" in empty
    assert "holds no documents" in nothing_kept_message(IN, OUT, Counter())
