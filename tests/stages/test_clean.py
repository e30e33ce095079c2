"""clean: each filter drops with its reason (literal documents, datatrove's test style)."""

import dataclasses
from pathlib import Path

import pytest

from stages.clean import CleanParams, clean_documents, normalize_whitespace, strip_markup
from stages.common import load_params

ROOT = Path(__file__).resolve().parents[2]
P = load_params("clean", CleanParams, ROOT / "params.yaml")

ENGLISH = (
    "In the beginning, God created the heavens and the earth. The earth was formless and empty.\n"
    "Darkness was on the surface of the deep and God's Spirit was hovering over the surface of the waters.\n"
    "God said, “Let there be light,” and there was light. God saw the light, and saw that it was good."
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
        ("EN el principio crió Dios los cielos y la tierra. Y la tierra estaba desordenada y vacía, y las tinieblas "
         "estaban sobre la haz del abismo, y el Espíritu de Dios se movía sobre la haz de las aguas.", "not_english"),
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
