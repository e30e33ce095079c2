"""sources: a user's corpus, task and parallel corpus, read row by row from local files or a Hugging Face dataset.

Used by stages/ingest.py when `ingest.source: own`. A source is one `ingest.<key>` mapping of params.yaml:

    files: data/own/reviews/*.csv    # a glob or a list of globs (sorted, each file read in turn), or
    hf: imdb                         # a Hugging Face dataset name or local dataset folder, + config and split
    format: csv                      # text | jsonl | csv | tsv | parquet; null = from each file's suffix (.gz too)

Rows stream: a file is read line by line (Parquet: batch by batch), a dataset with `streaming=True`, so a corpus
larger than memory flows through to `Dataset.from_generator`. Every bad source fails early (a file's columns before its
first row) with a message that names the params key and the file (and line): no file matched, an unreadable or
malformed file, a missing column, an empty split, a single class, a label outside the given set.

    rows(Source(files="data/own/*.csv"), "task", {"text_column": "text"})
    -> ("data/own/a.csv:2", {"text": "Great.", "label": "pos"}), ("data/own/a.csv:3", {...}), ...
"""

import codecs
import csv
import glob
import gzip
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stages.common import fail

FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "excel")
SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".xlsx": "excel", ".xls": "excel"}  # fmt: skip
TEXT_BY = ("line", "document")  # a text file's rows: one per non-blank line, or the whole file as one row
ERRORS = ("strict", "skip")  # an undecodable line: stop the run naming it, or drop it and count it (`undecodable`)


@dataclass(frozen=True)
class Source:
    """Where one kind of rows comes from, and which columns hold what (each key is an `ingest.<role>.<key>`)."""

    files: str | list[str] | None = None  # glob(s) of local files, relative to the repository root
    hf: str | None = None  # or a Hugging Face dataset (offline: it must be in the HF cache) or local dataset folder
    config: str | None = None  # the dataset's config (subset) name
    split: str = "train"  # the dataset's split
    format: str | None = None  # null: from each file's suffix
    encoding: str = "utf-8"  # of text files (a UTF-8 byte-order mark is skipped); e.g. latin-1, cp1252
    errors: str = "strict"  # an undecodable line: strict stops the run naming it; skip drops and counts it
    text_by: str = "line"  # text files: line | document
    text_column: str = "text"  # the text (corpus, task) or the English side (parallel)
    label_column: str = "label"  # task only: the class of each row
    target_column: str = "target"  # parallel only: the other language's side
    labels: list[str] | None = None  # task only: the label set, in label-id order; null = the values found, sorted
    validation: "Source | None" = None  # task only: a given validation split (same columns); null = split from seed
    test: "Source | None" = None  # task only: a given test split; null = split from the seed

    def validate(self):
        if (self.files is None) == (self.hf is None):
            yield "files/hf: give exactly one: local files (a glob) or a Hugging Face dataset name"
        if self.format is not None and self.format not in FORMATS:
            yield f"format: expected one of {', '.join(FORMATS)} or null, got {self.format!r}"
        if self.text_by not in TEXT_BY:
            yield f"text_by: expected line or document, got {self.text_by!r}"
        if self.errors not in ERRORS:
            yield f"errors: expected strict or skip, got {self.errors!r}"
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            yield f"encoding: unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)"


def expand(patterns: str | list[str], key: str) -> list[Path]:
    """The files the globs match, sorted and without repeats; a glob matching nothing fails naming the key.

    ["data/own/b.csv", "data/own/*.csv"] -> [data/own/a.csv, data/own/b.csv]
    """
    found, root = set(), Path.cwd().resolve()
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matched = [Path(f) for f in glob.glob(str(Path(pattern).expanduser()), recursive=True) if Path(f).is_file()]
        if not matched:
            fail(f"ingest.{key}.files: {pattern!r} matches no file (relative paths start at the repository root)")
        for f in matched:  # DVC sees only the project: a link out of it would feed the run files no dep covers
            if root in f.absolute().parents and root not in f.resolve().parents:
                fail(f"ingest.{key}.files: {f} leads to {f.resolve()}, outside the project ({root}); copy the file "
                     "into data/own/ instead of linking it")  # fmt: skip
        found.update(matched)
    return sorted(found)


def file_format(path: Path, given: str | None, key: str) -> str:
    """The format of a file: the one given, or its suffix's (a .gz suffix is looked through): a.csv.gz -> csv."""
    if given:
        return given
    suffix = Path(path.name.removesuffix(".gz")).suffix.lower()
    if suffix not in SUFFIXES:
        fail(f"ingest.{key}.format: cannot tell the format of {path} from its suffix; set it ({', '.join(FORMATS)})")
    return SUFFIXES[suffix]


def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict"):
    """A text stream of the file, decompressed when it ends in .gz. UTF-8 skips a byte-order mark (what Excel
    writes); errors `skip` keeps undecodable bytes as surrogates for read_file to drop the line, `strict` raises."""
    encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    kw = {"encoding": encoding, "errors": "surrogateescape" if errors == "skip" else "strict", "newline": ""}
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", **kw)
    return open(path, **kw)


def undecodable(*texts) -> bool:
    """Whether a line held bytes its encoding cannot decode (surrogateescape keeps them as lone surrogates)."""
    return any(isinstance(t, str) and any("\udc80" <= ch <= "\udcff" for ch in t) for t in texts)


def read_file(path: Path, fmt: str, text_by: str = "line", encoding: str = "utf-8",
              errors: str = "strict") -> Iterator[tuple[int, dict | None]]:  # fmt: skip
    """(line or row number, row) of one file, lazily; a malformed row fails naming the file and line. With errors
    `skip`, a line that does not decode comes as (number, None)."""
    if fmt == "excel":
        yield from read_excel(path)
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    with open_text(path, encoding, errors) as f:
        if fmt == "text" and text_by == "document":
            text = f.read()
            yield 1, None if undecodable(text) else {"text": text}
        elif fmt == "text":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, None if undecodable(line) else {"text": line.rstrip("\r\n")}
        elif fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if undecodable(line):
                    yield n, None
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}: not a JSON line ({e})")
                if not isinstance(row, dict):
                    fail(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
                yield n, row
        else:
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            for row in reader:
                if undecodable(*row.values(), *row.get(None, [])):
                    yield reader.line_num, None
                    continue
                if None in row:  # more fields than the header has names
                    fail(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} fields, the header names "
                         f"{len(reader.fieldnames)}; quote fields that hold the delimiter")  # fmt: skip
                yield reader.line_num, row


def first_undecodable(path: Path, encoding: str) -> int:
    """The number of the first line of the file that does not decode (1 when none is found line by line)."""
    with open_text(path, encoding, "skip") as f:
        return next((n for n, line in enumerate(f, 1) if undecodable(line)), 1)


def read_excel(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of an Excel workbook's first sheet, the first row naming the columns (openpyxl, if installed)."""
    try:
        import openpyxl
    except ImportError:
        fail(f"{path}: an Excel workbook; save it as CSV (CSV UTF-8) and point ingest at the .csv, or "
             "`pip install openpyxl` to read it as it is")  # fmt: skip
    sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
    it = sheet.iter_rows(values_only=True)
    names = [str(c) if c is not None else "" for c in next(it, ())]
    for n, values in enumerate(it, 2):
        if any(v is not None for v in values):
            yield n, {k: ("" if v is None else str(v)) for k, v in zip(names, values, strict=False)}


def file_columns(path: Path, fmt: str, encoding: str = "utf-8") -> list[str] | None:
    """The columns a file declares up front (CSV/TSV header, Parquet schema); None when only rows tell (JSONL)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt in ("csv", "tsv"):
        with open_text(path, encoding) as f:
            return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])
    return ["text"] if fmt == "text" else None


def check_columns(have: list[str], need: dict[str, str], key: str, where: str) -> None:
    """Fail naming the param and the column when a needed column is absent.

    have ['review'], need {'text_column': 'text'} -> "...: no column 'text' (ingest.task.text_column); it has 'review'"
    """
    if missing := [(param, col) for param, col in need.items() if col not in have]:
        names = ", ".join(f"{col!r} (ingest.{key}.{param})" for param, col in missing)
        fail(f"{where}: no column {names}; it has {', '.join(map(repr, have)) or 'none'}")


def rows(s: Source, key: str, need: dict[str, str], drops: Counter | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of the source, lazily; `need` maps params to the columns each row must have
    ({'text_column': 'review'}).

    A file's columns are checked before its first row is read, so a CSV missing a column fails at once. Unreadable
    files (a corrupt gzip or Parquet file) fail naming the file; so does a line that does not decode, unless the
    source's `errors` is skip: then it is dropped and counted in `drops["undecodable"]`.
    """
    if s.hf is not None:
        yield from hf_rows(s, key, need)
        return
    drops = Counter() if drops is None else drops
    for path in expand(s.files, key):
        fmt = file_format(path, s.format, key)
        try:
            declared = file_columns(path, fmt, s.encoding)
            if declared is not None:
                check_columns(declared, need, key, str(path))
            for n, row in read_file(path, fmt, s.text_by, s.encoding, s.errors):
                if row is None:
                    drops["undecodable"] += 1
                    continue
                check_columns(list(row), need, key, f"{path}:{n}")
                yield f"{path}:{n}", row
        except UnicodeDecodeError as e:
            line = first_undecodable(path, s.encoding)
            fail(f"ingest.{key}.files: {path}:{line} is not {s.encoding} ({e.reason}); set ingest.{key}.encoding "
                 f"(e.g. latin-1), or ingest.{key}.errors: skip to drop such lines")  # fmt: skip
        except (OSError, EOFError, csv.Error) as e:
            fail(f"ingest.{key}.files: cannot read {path} as {fmt} ({type(e).__name__}: {e})")
        except Exception as e:  # pyarrow's errors for a file that is not Parquet
            if type(e).__module__.startswith("pyarrow"):
                fail(f"ingest.{key}.files: cannot read {path} as {fmt} ({type(e).__name__}: {e})")
            raise


def hf_rows(s: Source, key: str, need: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """Rows of a Hugging Face dataset, streamed; offline, a hub dataset must already be in the local cache."""
    import datasets

    where = f"{s.hf}" + (f" ({s.config})" if s.config else "") + f"[{s.split}]"
    try:
        ds = datasets.load_dataset(s.hf, s.config, split=s.split, streaming=True)
    except Exception as e:  # datasets raises many kinds: not found, offline, no such config or split
        fail(f"ingest.{key}.hf: cannot load {where} ({type(e).__name__}: {str(e)[:300]}); offline "
             "(HF_DATASETS_OFFLINE=1) a hub dataset must already be in the Hugging Face cache, or use local files "
             f"(ingest.{key}.files)")  # fmt: skip
    if ds.features is not None:
        check_columns(list(ds.features), need, key, where)
    for n, row in enumerate(ds, 1):
        check_columns(list(row), need, key, f"{where} row {n}")
        yield f"{where} row {n}", row


# --- a user's task, corpus and parallel corpus, in the shapes the bundled data has -----------------------------------


def describe(s: Source) -> str:
    """The source as the user named it: 'data/own/*.csv' or 'imdb (plain_text)[test]'."""
    if s.hf is not None:
        return f"{s.hf}" + (f" ({s.config})" if s.config else "") + f"[{s.split}]"
    return ", ".join([s.files] if isinstance(s.files, str) else s.files)


def read_labeled(s: Source, key: str, columns: Source) -> tuple[list[dict], Counter]:
    """Rows {text, label (as a string), where} of a labeled source, and the rows dropped per reason.

    `columns` names the text and label columns (the task's: a given validation or test split has the same ones).
    A row with an empty text or no label is dropped with a reason; a source with no row left fails (an empty split).
    """
    need = {"text_column": columns.text_column, "label_column": columns.label_column}
    out, drops = [], Counter()
    for where, row in rows(s, key, need, drops):
        text, label = row[columns.text_column], row[columns.label_column]
        if not isinstance(text, str) or not text.strip():
            drops["empty_text"] += 1
        elif label is None or not str(label).strip():
            drops["no_label"] += 1
        else:
            out.append({"text": text.strip(), "label": str(label).strip(), "where": where})
    if not out:
        fail(f"ingest.{key}: no labeled rows in {describe(s)} (an empty split; dropped: {dict(drops) or 'none'})")
    return out, drops


def label_names(rows: list[dict], given: list[str] | None) -> list[str]:
    """The label set in label-id order: the given one, or the values found sorted (numbers by value).

    labels 'pos', 'neg', 'pos' -> ['neg', 'pos']; '10', '2' -> ['2', '10']. A value outside a given set fails
    naming its row; fewer than two classes fail (there is nothing to classify).
    """
    found = {r["label"] for r in rows}
    if given is not None:
        given = [str(g) for g in given]
        if bad := next((r for r in rows if r["label"] not in given), None):
            fail(f"{bad['where']}: label {bad['label']!r} is not in ingest.task.labels {given}")
        names = given
    else:
        names = sorted(found, key=lambda v: (0, float(v), v) if is_number(v) else (1, 0.0, v))
    if len(found) < 2:
        fail(f"ingest.task.label_column: every row has the label {next(iter(found))!r}; a classification task needs "
             "at least 2 classes")  # fmt: skip
    return names


def is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def split_rows(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Row indices per split, per class, deterministic from the seed; each class gives every split in `fractions`
    at least one row, and keeps at least one for train.

    labels ['a', 'a', 'a', 'b', 'b', 'b'], {'test': 0.3} -> {'train': [...4 rows], 'test': [one 'a', one 'b']}
    """
    by_label = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    out = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        for name, fraction in fractions.items():
            n = max(1, round(fraction * len(by_label[label])))
            out[name] += idx[:n]
            idx = idx[n:]
        if not idx:
            fail(f"ingest.task: class {label!r} has {len(by_label[label])} rows; holding out "
                 f"{', '.join(fractions)} leaves none to train on (give more rows or smaller fractions)")  # fmt: skip
        out["train"] += idx
    return {name: sorted(idx) for name, idx in out.items()}
