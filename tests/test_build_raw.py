"""The bundled raw data: markup stripped without gluing words, verse-aligned, as SOURCES.md says."""

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from scripts.build_raw import osis_to_text

RAW = Path(__file__).resolve().parents[1] / "data/raw"


@pytest.mark.parametrize(
    "osis, text",
    [
        # WEB: a footnote between two words (the join 'Godcreated' a naive clean makes)
        ('<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>'
         "The Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).</note><w>created</w> <w>the</w> <w>heavens</w>.",
         "God created the heavens."),
        # WEB: a footnote between two quotes ('bornSon')
        ('<q marker="" who="Jesus"><w>his</w> <w>only</w> born</q><note placement="foot">3:16 The phrase</note>'
         '<q marker="" who="Jesus"><w>Son</w>, <w>that</w></q>', "his only born Son, that"),
        # a footnote after punctuation, and one before it
        ("<w>Christ</w>,<note>Messiah</note><w>the</w> <w>son</w><note>x</note>.", "Christ, the son."),
        # canonical Psalm title kept, section heading and line milestones dropped
        ('<title canonical="true" type="psalm">A Psalm by David.</title> <lg sID="a"/><l sID="b"/><w>Yahweh</w> '
         '<w>is</w> <w>my</w> <w>shepherd</w>;<l eID="b"/><l sID="c"/><w>I</w> <w>shall</w>',
         "A Psalm by David. Yahweh is my shepherd; I shall"),
        ("<title>The Creation</title><w>In</w> <w>the</w> <w>beginning</w>", "In the beginning"),
        # WEB: the glossary appended to Revelation 22:21 is not verse text
        ('<w>saints</w>. Amen. <chapter eID="Rev.22"/><div sID="g1" type="glossary"/> <milestone n="Glossary" '
         'type="x-usfm-h"/>The following words used in the World English Bible', "saints. Amen."),
        # KJV: pilcrow, divine name, added words
        ("¶ The <divineName><w>LORD</w></divineName> <transChange type=\"added\">is</transChange> my shepherd",
         "The LORD is my shepherd"),
        # Reina-Valera: tags with no spaces around them, and an enclitic pronoun glued to its verb
        ('<w>y díjo</w><transChange type="added">le</transChange><w>Dios</w>: <w>Pide</w> <w>lo que</w>'
         '<transChange type="added">quisieres que</transChange><w>yo te dé</w>.',
         "y díjole Dios: Pide lo que quisieres que yo te dé."),
    ],
)  # fmt: skip
def test_osis_to_text(osis, text):
    assert osis_to_text(osis) == text


def read(name):
    with gzip.open(RAW / f"{name}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def bibles():
    return {name: read(name) for name in ("web", "kjv", "sparv")}


def test_no_glued_words_or_markup_remain(bibles):
    # A lower-case letter followed by an upper-case one inside a word is how a glued join looks
    # ('Godcreated' has none, so also check the words a footnote used to split in the WEB).
    for name, rows in bibles.items():
        joins = [
            (r["book"], r["chapter"], r["verse"], w)
            for r in rows
            for w in re.findall(r"\w*[a-zá-ú][A-ZÁ-Ú]\w*", r["text"])
        ]
        assert joins == [], f"{name}: glued words {joins[:5]}"
        leftovers = [r for r in rows if re.search(r"[<>¶]|\s{2}", r["text"]) or len(r["text"]) > 1000]
        assert leftovers == [], f"{name}: markup or double spaces left in {leftovers[:3]}"
    text = " ".join(r["text"] for r in bibles["web"])
    for glued in ("Godcreated", "bornSon", "Christ,the"):
        assert glued not in text
    gen1 = {r["verse"]: r["text"] for r in bibles["web"] if (r["book"], r["chapter"]) == ("Gen", 1)}
    assert gen1[1] == "In the beginning, God created the heavens and the earth."


def test_verse_aligned_and_counted_as_sources_say(bibles):
    sources = (RAW / "SOURCES.md").read_text()
    for name, rows in bibles.items():
        assert {"book", "chapter", "verse", "text"} == set(rows[0])
        assert len({(r["book"], r["chapter"]) for r in rows}) == 1189
        assert f"| {len(rows):,} | 1,189 |" in sources
        digest = hashlib.sha256((RAW / f"{name}.jsonl.gz").read_bytes()).hexdigest()
        assert digest in sources, f"{name}: sha256 in SOURCES.md is stale"
    keys = [{(r["book"], r["chapter"], r["verse"]) for r in rows} for rows in bibles.values()]
    shared = set.intersection(*keys)
    assert len(shared) > 0.99 * min(len(k) for k in keys)
