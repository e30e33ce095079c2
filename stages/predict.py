"""predict: classify new text with a fine-tuned run (a command, not a DVC stage).

Reads  a file of texts: .txt (one per line), .csv / .tsv / .jsonl / .parquet (a text column, --column), .gz too;
       or stdin (`-`, one text per line); and a run's folder (--model, default models/release)
Writes one row per text, in input order: label, the probability of every class, whether the text was truncated,
       the model used; JSON lines (default) or CSV (--out *.csv or --format csv), to --out or stdout

    python -m stages.predict verses.txt                                  # JSON lines on stdout
    python -m stages.predict reviews.csv --column review --out preds.csv --model models/7_finetune/lora
    echo "Jesus said to his disciples, follow me" | python -m stages.predict -

Batched (--batch-size) by length, as the pipeline's evaluation is; a progress bar on a terminal only. Bad input
stops with one line naming the file (and line): no such file, an empty file, a missing column, a line that is not
UTF-8 (--encoding). A text longer than the model takes is truncated and counted on stderr, not refused.
"""

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from stages.common import fail
from stages.sources import SUFFIXES, file_columns, first_undecodable, read_file

MODEL = Path("models/release")
OUT_FORMATS = ("jsonl", "csv")


def read_texts(source: str, column: str = "text", fmt: str | None = None, encoding: str = "utf-8") -> list[str]:
    """The texts of a file (or stdin for "-"), in order; fails with one line for what the user must fix.

    A .txt file gives one text per non-blank line; a table gives its `column`; an empty text in a table fails
    naming its line (there is nothing to classify).
    """
    if source == "-":
        return stdin_texts(encoding)
    path = Path(source)
    if not path.is_file():
        fail(f"{path}: no such file")
    suffix = Path(path.name.removesuffix(".gz")).suffix.lower()
    fmt = fmt or SUFFIXES.get(suffix)
    if fmt is None:
        fail(f"{path}: cannot tell the format from its suffix {suffix!r}; pass --input-format")
    column = "text" if fmt == "text" else column  # a text file's rows are its lines
    texts = []
    try:
        declared = file_columns(path, fmt, encoding)
        if declared is not None and column not in declared:
            fail(f"{path}: no column {column!r} (--column); it has {', '.join(map(repr, declared)) or 'none'}")
        for n, row in read_file(path, fmt, "line", encoding):
            if column not in row:
                fail(f"{path}:{n}: no column {column!r} (--column); it has {', '.join(map(repr, row))}")
            text = row[column]
            if not isinstance(text, str) or not text.strip():
                fail(f"{path}:{n}: empty text in column {column!r}")
            texts.append(text)
    except UnicodeDecodeError as e:
        fail(f"{path}:{first_undecodable(path, encoding)} is not {encoding} ({e.reason}); pass --encoding "
             "(e.g. latin-1) or convert the file to UTF-8")  # fmt: skip
    except (OSError, EOFError, csv.Error) as e:
        fail(f"{path}: cannot read it as {fmt} ({type(e).__name__}: {e})")
    except Exception as e:  # pyarrow's errors for a file that is not Parquet
        if not type(e).__module__.startswith("pyarrow"):
            raise
        fail(f"{path}: cannot read it as {fmt} ({type(e).__name__}: {e})")
    if not texts:
        fail(f"{path}: no texts to classify (an empty file)")
    return texts


def stdin_texts(encoding: str) -> list[str]:
    """One text per non-blank line of stdin, decoded strictly (a UTF-8 byte-order mark is skipped)."""
    texts = []
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
        except UnicodeDecodeError as e:
            fail(f"stdin:{n} is not {encoding} ({e.reason}); pass --encoding (e.g. latin-1)")
        if line.strip():
            texts.append(line.rstrip("\r\n"))
    if not texts:
        fail("stdin: no texts to classify (empty input)")
    return texts


def render(rows: list[dict], fmt: str) -> str:
    """JSON lines, or CSV with a p_<label> column per class."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    labels = list(rows[0]["probabilities"]) if rows else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", *(f"p_{name}" for name in labels), "truncated", "model"])
    for r in rows:
        writer.writerow([r["label"], *(r["probabilities"][name] for name in labels), r["truncated"], r["model"]])
    return buf.getvalue()


def run(source: str, model_dir: Path = MODEL, out: Path | None = None, column: str = "text", fmt: str | None = None,
        out_format: str = "jsonl", batch_size: int = 64, encoding: str = "utf-8") -> dict:  # fmt: skip
    """Classify the texts of `source` with the run at model_dir, write the rows to `out` (stdout when None);
    return counts: texts, truncated, labels predicted."""
    from specialist.classifier import load
    from specialist.predict import classify

    texts = read_texts(source, column, fmt, encoding)
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        fail(f"{model_dir}: not a model folder (no config.json or adapter_config.json); `dvc repro release` "
             "writes models/release, or give a run's folder, e.g. --model models/7_finetune/full")  # fmt: skip
    model, tokenizer = load(model_dir)
    rows = classify(model, tokenizer, texts, batch_size, str(model_dir), progress_bar(len(texts)))
    text = render(rows, out_format)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    truncated = sum(r["truncated"] for r in rows)
    if truncated:
        print(f"{truncated} of {len(rows)} texts were longer than the model's {tokenizer.model_max_length} tokens "
              "and were truncated (marked `truncated`)", file=sys.stderr)  # fmt: skip
    counts = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return {"texts": len(rows), "truncated": truncated, "labels": counts, "model": str(model_dir)}


def progress_bar(total: int):
    """A tqdm bar's update function on a terminal (stderr), None elsewhere (logs, pipes, Prefect)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="text", file=sys.stderr)

    def update(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return update


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[6:9]))  # fmt: skip
    ap.add_argument("input", help="a .txt/.csv/.tsv/.jsonl/.parquet file (.gz too), or - for stdin")
    ap.add_argument("--model", type=Path, default=MODEL, help="a run's folder (default: %(default)s)")
    ap.add_argument("--column", default="text", help="the text column of a table (default: %(default)s)")
    ap.add_argument("--input-format", choices=["text", "jsonl", "csv", "tsv", "parquet"], default=None,
                    help="the input's format (default: from its suffix)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    ap.add_argument("--format", choices=OUT_FORMATS, default=None, help="jsonl or csv (default: --out's suffix)")
    ap.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: %(default)s)")
    ap.add_argument("--encoding", default="utf-8", help="of text input (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.batch_size < 1:
        fail(f"--batch-size: must be >= 1, got {a.batch_size}")
    out_format = a.format or ("csv" if a.out is not None and a.out.suffix.lower() == ".csv" else "jsonl")
    counts = run(a.input, a.model, a.out, a.column, a.input_format, out_format, a.batch_size, a.encoding)
    print(json.dumps(counts), file=sys.stderr)
    return counts


if __name__ == "__main__":
    main()
