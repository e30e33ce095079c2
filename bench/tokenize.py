"""bench.tokenize: does the tokenize stage encode as fast as raw `tokenizers`? (issue 4's target: stage >= 0.8x raw)

    python -m bench.tokenize                          # the whole corpus, best of 5; writes reports/bench/tokenize.json
    python -m bench.tokenize --quick --out /tmp/t.json  # the first 20 documents, best of 2 (seconds; for tests)

--quick trains its tokenizer (when there is no saved one) on its 20 documents only: a smaller vocabulary, so its
numbers say the code runs, not how fast the stage is.

Text: data/2_clean/corpus if present (what the stage reads), else the English chapters built from data/raw as the
ingest stage builds them (stages.ingest with params.yaml's `ingest:`; not cleaned). Tokenizer:
data/3_tokenize/tokenizer if present, else trained on that text by stages.tokenize.train_tokenizer with params.yaml's
`tokenize:` (not timed). Three encodings of the same texts, taking turns, each timed best of --repeats:

  stage  the stage's own path: `docs.map(encode, batched=True, num_proc=..., remove_columns=docs.column_names,
         cache_file_name=<a fresh temp folder>/ids.arrow)` on the corpus loaded from disk, with `encode` =
         `tokenizer(batch["text"], add_special_tokens=False)["input_ids"]`. `encode` is a closure inside
         stages.tokenize.run, so this module replicates that call argument for argument: keep the two in step.
  call   the same transformers tokenizer called once on all texts (the stage's call without datasets.map), which
         tells whether a gap comes from datasets or from transformers
  raw    `tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)`, the `tokenizers` library alone

Each is timed up to the ids as Python lists. MB/s = UTF-8 bytes of the texts / 1e6 / best seconds; `ratio` = stage
MB/s / raw MB/s. The three must give the same ids, or the run fails. The report (written atomically: temp file +
rename) also records the machine, library versions, the command and the date.
"""

import argparse
import importlib.metadata as md
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from stages.common import fail, load_params, write_json
from stages.tokenize import CORPUS, OUT, TokenizeParams, train_tokenizer

RAW = Path("data/raw")
REPORT = Path("reports/bench/tokenize.json")
TARGET = 0.8  # stage throughput / raw throughput, at least
QUICK_DOCS = 20


def ingest_corpus(raw: Path = RAW) -> list[dict]:
    """The ingest stage's corpus documents (English training chapters), built in memory as stages.ingest.run does."""
    from stages.ingest import IngestParams, build_corpus, read_raw, split_chapters

    p = load_params("ingest", IngestParams)
    names = sorted({*p.corpus_translations, p.task_translation, p.parallel_source, p.parallel_target})
    translations = {name: read_raw(raw / f"{name}.jsonl.gz") for name in names}
    split = split_chapters([(r["book"], r["chapter"]) for rows in translations.values() for r in rows], p)
    return build_corpus({n: translations[n] for n in p.corpus_translations}, split)


def load_docs(tmp: Path, quick: bool):
    """(Dataset memory-mapped from disk as the stage reads it, where the text came from)."""
    from datasets import Dataset, load_from_disk

    if CORPUS.exists():
        docs, source = load_from_disk(str(CORPUS)), str(CORPUS)
    else:
        Dataset.from_list(ingest_corpus()).save_to_disk(tmp / "corpus")
        docs, source = load_from_disk(str(tmp / "corpus")), f"{RAW} (ingest's English chapters, not cleaned)"
    if quick:  # a slice saved and reloaded, so it too is read from disk
        docs.select(range(min(QUICK_DOCS, len(docs)))).save_to_disk(tmp / "quick")
        docs = load_from_disk(str(tmp / "quick"))
    return docs, source


def load_tokenizer(texts: list[str], p: TokenizeParams):
    """(the tokenize stage's tokenizer if it was built, else one trained as the stage trains it; its source)."""
    from transformers import AutoTokenizer

    saved = OUT / "tokenizer"
    if saved.exists():
        return AutoTokenizer.from_pretrained(saved), str(saved)
    return train_tokenizer(texts, p.vocab_size, p.min_frequency), "trained here (stages.tokenize.train_tokenizer)"


def stage_encode(docs, tokenizer, num_proc: int) -> list[list[int]]:
    """stages.tokenize.run's encoding, call for call (its `encode` is a closure there)."""

    def encode(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

    num_proc = num_proc if num_proc > 1 else None
    with tempfile.TemporaryDirectory() as cache:
        ids = docs.map(encode, batched=True, num_proc=num_proc, remove_columns=docs.column_names,
                       cache_file_name=str(Path(cache, "ids.arrow")))  # fmt: skip
        return list(ids["input_ids"])  # Python lists, as raw_encode returns (the stage reads them a batch at a time)


def call_encode(texts: list[str], tokenizer) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def raw_encode(texts: list[str], tokenizer) -> list[list[int]]:
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def alternated(runs: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """({name: seconds of each of its `repeats` calls}, {name: its last result}), the runs taking turns (stage, call,
    raw, stage, ...): on a shared machine a burst of other work slows one round of all three, not one of them."""
    seconds, results = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def machine() -> dict:
    versions = {}
    for pkg in ("torch", "tokenizers", "transformers", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # at the start
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
        "env": threads,
    }


def git_revision() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def bench(repeats: int, quick: bool) -> dict:
    p = load_params("tokenize", TokenizeParams)
    host = machine()  # before any work, so the load average is the machine's, not ours
    with tempfile.TemporaryDirectory() as tmp:
        docs, source = load_docs(Path(tmp), quick)
        texts = list(docs["text"])
        tokenizer, tok_source = load_tokenizer(texts, p)
        runs = {
            "stage": lambda: stage_encode(docs, tokenizer, p.num_proc),
            "call": lambda: call_encode(texts, tokenizer),
            "raw": lambda: raw_encode(texts, tokenizer),
        }
        seconds, ids = alternated(runs, repeats)
    if not ids["stage"] == ids["call"] == ids["raw"]:
        fail("the stage's encoding, the transformers call and raw tokenizers gave different ids: not comparable")
    mb = sum(len(t.encode()) for t in texts) / 1e6
    mb_per_s = {name: round(mb / min(s), 3) for name, s in seconds.items()}
    ratio = round(mb_per_s["stage"] / mb_per_s["raw"], 3)
    return {
        "ratio": ratio,  # stage MB/s / raw MB/s
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "mb_per_s": mb_per_s,
        "best_seconds": {name: round(min(s), 4) for name, s in seconds.items()},
        "seconds": {name: [round(x, 4) for x in s] for name, s in seconds.items()},
        "repeats": repeats,
        "quick": quick,
        "num_proc": p.num_proc,
        "text": {"source": source, "documents": len(texts), "mb": round(mb, 3), "chars": sum(map(len, texts))},
        "tokens": sum(map(len, ids["raw"])),
        "tokenizer": {"source": tok_source, "vocab_size": len(tokenizer)},
        "machine": host,
        "git_revision": git_revision(),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.tokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_DOCS} documents (for tests)")
    parser.add_argument("--repeats", type=int, help="timed runs of each; the best counts (default 5, quick 2)")
    parser.add_argument("--out", type=Path, default=REPORT, help=f"where the JSON report goes (default {REPORT})")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats: must be >= 1")
    report = bench(repeats, args.quick)
    report["command"] = shlex.join(["python", "-m", "bench.tokenize", *argv])
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(report, args.out)
    mb, ratio = report["mb_per_s"], report["ratio"]
    print(f"{report['text']['mb']} MB, {report['tokens']:,} tokens, best of {repeats}:")
    for name in ("stage", "call", "raw"):
        print(f"  {name:<6}{mb[name]:>10.2f} MB/s")
    print(f"stage / raw = {ratio:.2f} (target >= {TARGET}: {'met' if report['meets_target'] else 'NOT met'})")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
