"""Build the bundled raw data: three public-domain Bibles, verse-aligned, from Debian's SWORD packages.

Reads the Debian packages sword-text-web (World English Bible), sword-text-kjv (King James) and
sword-text-sparv (Reina-Valera 1909), fetched with `apt-get download`, through pysword; strips the OSIS
markup (Strong's tags, footnotes, headings, milestones) without gluing words; writes one gzipped JSON-lines
file per translation under data/raw/ (rows: book, chapter, verse, text) and data/raw/SOURCES.md.

    python -m scripts.build_raw            # downloads the .debs into a temp dir (needs apt)
    python -m scripts.build_raw --debs DIR # or reads them from DIR

Takes about two minutes (pysword reads verse by verse). The outputs are committed; rerunning gives
byte-identical files (gzip mtime 0).
"""

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

TRANSLATIONS = {  # name -> (Debian package, SWORD module, language)
    "web": ("sword-text-web", "engWEB2015eb", "en"),
    "kjv": ("sword-text-kjv", "engKJV2006eb", "en"),
    "sparv": ("sword-text-sparv", "spaRV1909eb", "es"),
}
# Elements whose content is not verse text: footnotes and cross references, section headings (titles that
# are not canonical), speaker labels (Song of Songs).
_SKIP = {"note", "speaker"}
# Elements that mark a boundary in the text (a line, a paragraph, a chapter): a word never spans them.
_BREAK = {"note", "speaker", "title", "l", "lg", "lb", "div", "chapter", "list", "item", "milestone", "p"}
_TAG = re.compile(r"<(/?)([A-Za-z]+)([^>]*?)(/?)>")
# The WEB module appends its glossary to the last verse (Revelation 22:21): book matter, not verse text.
_BACK_MATTER = re.compile(r'<div\b[^>]*type="(?:glossary|introduction)"')
_BRK = "\x00"  # a hard boundary: becomes a space, or nothing before punctuation
_SOFT = "\x01"  # any other tag: a space only between two letters (the Spanish module omits spaces at tags)
# Reina-Valera marks enclitic pronouns as added words, glued to the verb: 'díjo<transChange>le</transChange>'
# is 'díjole', so no boundary is put before them.
_ENCLITIC = re.compile(r"(?:le|les|lo|la|los|las|se|me|te|nos|os)</transChange>")


def osis_to_text(osis: str) -> str:
    """Plain text of one OSIS verse: markup gone, boundaries kept as spaces, no words glued.

    A footnote between two words becomes a space, one before punctuation disappears:
    'God<note>..</note><w>created</w>' -> 'God created'; 'Christ,<note>..</note>the' -> 'Christ, the';
    'Son<note>..</note>.' -> 'Son.'; '<w>lo que</w><transChange>quisieres</transChange>' -> 'lo que quisieres'
    """
    osis = _BACK_MATTER.split(osis, 1)[0]
    out, skipping, pos = [], [], 0  # skipping: stack of open elements whose content is dropped
    for m in _TAG.finditer(osis):
        closing, name, attrs, selfclosing = m.group(1), m.group(2), m.group(3), m.group(4)
        if not skipping:
            out.append(osis[pos : m.start()])
        pos = m.end()
        if closing and skipping and skipping[-1] == name:
            skipping.pop()
        elif (
            not closing
            and not selfclosing
            and (name in _SKIP or (name == "title" and 'canonical="true"' not in attrs))
        ):
            skipping.append(name)
        if name in _BREAK:
            out.append(_BRK)
        elif name == "transChange" and not closing and _ENCLITIC.match(osis, m.end()):
            while out and out[-1] in ("", _SOFT):  # glue the pronoun to the verb before it
                out.pop()
        else:
            out.append(_SOFT)
    if not skipping:
        out.append(osis[pos:])
    text = "".join(out).replace("¶", " ")
    text = re.sub(r"(?<=\w)" + _SOFT + r"+(?=\w)", " ", text).replace(_SOFT, "")
    text = re.sub(r"\s*" + _BRK + r"[\s" + _BRK + r"]*(?=[,.;:!?’”)\]])", "", text)  # break before punctuation
    text = re.sub(r"[\s" + _BRK + r"]+", " ", text)
    return text.strip()


def read_module(sword_dir: Path, module: str, books: list[str] | None = None) -> list[dict]:
    """Verses of one SWORD module as rows {book, chapter, verse, text}, empty verses left out."""
    from pysword.modules import SwordModules

    modules = SwordModules(str(sword_dir))
    modules.parse_modules()
    bible = modules.get_bible_from_module(module)
    structure = bible.get_structure().get_books()
    rows = []
    for book in structure["ot"] + structure["nt"]:
        if books is not None and book.osis_name not in books:
            continue
        for chapter, n_verses in enumerate(book.chapter_lengths, 1):
            for verse in range(1, n_verses + 1):
                raw = bible.get(books=[book.name], chapters=[chapter], verses=[verse], clean=False)
                text = osis_to_text(raw)
                if text:
                    rows.append({"book": book.osis_name, "chapter": chapter, "verse": verse, "text": text})
    return rows


def write_jsonl_gz(rows: list[dict], path: Path) -> None:
    """Deterministic gzip (mtime 0) so a rebuild is byte-identical."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debs", type=Path, help="folder holding the three .deb files (default: apt-get download)")
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="build_raw_"))
    debs = args.debs or work
    if args.debs is None:
        packages = [pkg for pkg, _, _ in TRANSLATIONS.values()]
        subprocess.run(["apt-get", "download", *packages], cwd=work, check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    kjv_books, table = None, []
    for name in ["kjv", "web", "sparv"]:  # KJV first: its 66 books define the canon kept from the others
        package, module, lang = TRANSLATIONS[name]
        deb = next(debs.glob(f"{package}_*.deb"))
        root = work / package
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        rows = read_module(root / "usr/share/sword", module, kjv_books)
        if kjv_books is None:
            kjv_books = list(dict.fromkeys(r["book"] for r in rows))
        path = args.out / f"{name}.jsonl.gz"
        write_jsonl_gz(rows, path)
        chapters = len({(r["book"], r["chapter"]) for r in rows})
        table.append((name, deb.name, module, lang, len(rows), chapters, path.name, sha256(path), sha256(deb)))
        print(f"{name}: {len(rows):,} verses, {chapters:,} chapters -> {path}")
    write_sources(args.out / "SOURCES.md", table)


def write_sources(path: Path, table: list[tuple]) -> None:
    lines = [
        "# Bundled raw data",
        "",
        "Three Bible translations, verse-aligned by (book, chapter, verse), built by `python -m scripts.build_raw`",
        "from Debian's SWORD module packages (fetched with `apt-get download`, read with pysword, OSIS markup",
        "stripped: Strong's tags, footnotes, cross references, section headings and speaker labels removed;",
        "canonical Psalm titles kept). Book ids are OSIS ids (`Gen`, `Matt`, ...); the 66 books of the KJV canon.",
        "",
        "License: all three are in the public domain (Debian copyright files: 'This work is not copyrighted.",
        "It is in the Public Domain.'). Upstream: eBible.org / CrossWire Bible Society.",
        "",
        "| file | translation | language | Debian package | SWORD module | verses | chapters "
        "| sha256 (file) | sha256 (.deb) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    titles = {"web": "World English Bible", "kjv": "King James Version (1769)", "sparv": "Reina-Valera 1909"}
    for name, deb, module, lang, verses, chapters, fname, sha_file, sha_deb in table:
        lines.append(
            f"| `{fname}` | {titles[name]} | {lang} | `{deb}` | {module} | {verses:,} | {chapters:,} "
            f"| `{sha_file}` | `{sha_deb}` |"
        )
    lines += [
        "",
        'Row format (one JSON object a line): `{"book": "Gen", "chapter": 1, "verse": 1, "text": "..."}`',
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
