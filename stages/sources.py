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

FORMATS = ("text", "jsonl", "csv", "tsv", "parquet")
SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}  # fmt: skip
TEXT_BY = ("line", "document")  # a text file's rows: one per non-blank line, or the whole file as one row


@dataclass(frozen=True)
class Source:
    """Where one kind of rows comes from, and which columns hold what (each key is an `ingest.<role>.<key>`)."""

    files: str | list[str] | None = None  # glob(s) of local files, relative to the repository root
    hf: str | None = None  # or a Hugging Face dataset (offline: it must be in the HF cache) or local dataset folder
    config: str | None = None  # the dataset's config (subset) name
    split: str = "train"  # the dataset's split
    format: str | None = None  # null: from each file's suffix
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


def expand(patterns: str | list[str], key: str) -> list[Path]:
    """The files the globs match, sorted and without repeats; a glob matching nothing fails naming the key.

    ["data/own/b.csv", "data/own/*.csv"] -> [data/own/a.csv, data/own/b.csv]
    """
    found = set()
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matched = [Path(f) for f in glob.glob(str(Path(pattern).expanduser()), recursive=True) if Path(f).is_file()]
        if not matched:
            fail(f"ingest.{key}.files: {pattern!r} matches no file (relative paths start at the repository root)")
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


def open_text(path: Path):
    """A text stream of the file, decompressed when it ends in .gz; decoding errors surface while reading."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_file(path: Path, fmt: str, text_by: str = "line") -> Iterator[tuple[int, dict]]:
    """(line or row number, row) of one file, lazily; a malformed row fails naming the file and line."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    with open_text(path) as f:
        if fmt == "text" and text_by == "document":
            yield 1, {"text": f.read()}
        elif fmt == "text":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, {"text": line.rstrip("\r\n")}
        elif fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
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
                if None in row:  # more fields than the header has names
                    fail(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} fields, the header names "
                         f"{len(reader.fieldnames)}; quote fields that hold the delimiter")  # fmt: skip
                yield reader.line_num, row


def file_columns(path: Path, fmt: str) -> list[str] | None:
    """The columns a file declares up front (CSV/TSV header, Parquet schema); None when only rows tell (JSONL)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt in ("csv", "tsv"):
        with open_text(path) as f:
            return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])
    return ["text"] if fmt == "text" else None


def check_columns(have: list[str], need: dict[str, str], key: str, where: str) -> None:
    """Fail naming the param and the column when a needed column is absent.

    have ['review'], need {'text_column': 'text'} -> "...: no column 'text' (ingest.task.text_column); it has 'review'"
    """
    if missing := [(param, col) for param, col in need.items() if col not in have]:
        names = ", ".join(f"{col!r} (ingest.{key}.{param})" for param, col in missing)
        fail(f"{where}: no column {names}; it has {', '.join(map(repr, have)) or 'none'}")


def rows(s: Source, key: str, need: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of the source, lazily; `need` maps params to the columns each row must have
    ({'text_column': 'review'}).

    A file's columns are checked before its first row is read, so a CSV missing a column fails at once. Unreadable
    files (bad encoding, a corrupt gzip or Parquet file) fail naming the file.
    """
    if s.hf is not None:
        yield from hf_rows(s, key, need)
        return
    for path in expand(s.files, key):
        fmt = file_format(path, s.format, key)
        try:
            declared = file_columns(path, fmt)
            if declared is not None:
                check_columns(declared, need, key, str(path))
            for n, row in read_file(path, fmt, s.text_by):
                check_columns(list(row), need, key, f"{path}:{n}")
                yield f"{path}:{n}", row
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
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
    for where, row in rows(s, key, need):
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
