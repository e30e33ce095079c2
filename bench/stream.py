"""bench.stream: does memory stay flat from ingest to pretrain as a user's corpus grows past what fits in memory?

    python -m bench.stream                                    # 476 chapters x 1, 4, 16; reports/bench/stream.json
    python -m bench.stream --base-docs 8 --sizes 1,2 --out /tmp/s.json    # seconds (for tests)

A user's data, as docs/own-data.md sets it up (ingest.source: own): the corpus as JSONL files, the first --base-docs
WEB chapters of the bundled corpus and N-1 copies with 30% of their words replaced by others of the chapter (far
enough apart that MinHash keeps them, so every stage after clean sees N times the text too); the task as a CSV of
labeled lines, the first line of each KJV chapter labeled with its book's genre. ingest, clean, tokenize and
pretrain (--pretrain-steps steps) then run in turn, each in a fresh child process with params.yaml's settings
(clean: 1 task, 1 worker, so its peak is one process's), each reading the previous stage's output, as `dvc repro`
chains them. Per stage and size: seconds, peak RSS (os.wait4's ru_maxrss) and, apart, the peaks of the stage's own
memory and of memory-mapped file pages (bench.memory: RSS counts the pages of every Arrow dataset read, which the
kernel drops when memory runs short). The corpus never enters this parent, whose RSS every child starts from (Linux
carries a process's peak RSS across fork and exec). A stage that holds the corpus in memory grows with it; one that
streams stays flat: `peak_memory_growth` is each stage's peak at the largest size over its peak at the smallest.
"""

import argparse
import csv
import dataclasses
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from bench.memory import peaks, run_child
from stages.common import write_json
from stages.presets import load_params

REPORT = Path("reports/bench/stream.json")
STAGES = ("ingest", "clean", "tokenize", "pretrain")
DOCS_PER_FILE = 1000
EDITED = 0.3  # share of a copy's words replaced: MinHash keeps it (5-gram Jaccard ~0.2), so every stage sees Nx


def build(base_docs: int, times: int, own: Path) -> dict:
    """own/corpus/*.jsonl (the Nx corpus, written one document at a time) and own/task.csv: {documents, mb}."""
    from bench.clean import base_corpus, near_copy
    from stages.ingest import BOOK_GENRE

    every = base_corpus(10**6)  # the bundled corpus: WEB chapters first, then KJV
    base = [d for d in every if d["id"].startswith("web/")][:base_docs]
    (own / "corpus").mkdir(parents=True)
    rng, n, size, f = random.Random(0), 0, 0, None
    for k in range(times):
        for d in base:
            if n % DOCS_PER_FILE == 0:
                f = f and f.close() or open(own / "corpus" / f"part-{n // DOCS_PER_FILE:05d}.jsonl", "w")
            row = d if k == 0 else near_copy(d, k, rng, EDITED)
            f.write(json.dumps({"text": row["text"]}, ensure_ascii=False) + "\n")
            n, size = n + 1, size + len(row["text"].encode())
    f.close()
    with open(own / "task.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["text", "label"])
        for d in every:
            if d["id"].startswith("kjv/"):
                w.writerow([d["text"].split("\n")[0], BOOK_GENRE[d["id"].split("/")[1].split(".")[0]]])
    return {"documents": n, "mb": round(size / 1e6, 3)}


def stage(name: str, work: Path) -> dict:
    """Runs in the child: one stage on work/, reading the previous stage's output there; {seconds, ...}."""
    from stages.sources import Source

    start = time.perf_counter()
    if name == "ingest":
        from stages.ingest import IngestParams, run

        p = dataclasses.replace(load_params("ingest", IngestParams), source="own", parallel=None,
                                corpus=Source(files=str(work / "own/corpus/*.jsonl")),
                                task=Source(files=str(work / "own/task.csv")))  # fmt: skip
        m = run(p, out=work / "1_ingest", metrics_path=work / "ingest.json")
        info = {"corpus_documents": m["corpus_documents"]}
    elif name == "clean":
        from stages.clean import CleanParams, run

        p = dataclasses.replace(load_params("clean", CleanParams), tasks=1, workers=1)
        m = run(p, work / "1_ingest/corpus", work / "2_clean", work / "clean.json")
        info = {"documents_out": m["documents_out"]}
    elif name == "tokenize":
        from stages.tokenize import TokenizeParams, run

        p = load_params("tokenize", TokenizeParams)
        m = run(p, work / "2_clean/corpus", work / "1_ingest/task", work / "3_tokenize", work / "tokenize.json")
        info = {"corpus_tokens": m["corpus_tokens"], "blocks": m["blocks"]}
    else:
        from stages.pretrain import PretrainParams, run

        steps = int(os.environ["BENCH_PRETRAIN_STEPS"])
        p = dataclasses.replace(load_params("pretrain", PretrainParams), max_steps=steps, warmup_steps=1,
                                eval_every=steps, eval_batches=1, checkpoint_every=0)  # fmt: skip
        m = run(p, work / "3_tokenize/blocks", work / "3_tokenize/tokenizer", work / "4_pretrain",
                work / "pretrain.json", work / "pretrain_live", work / "ckpt")  # fmt: skip
        info = {"steps": steps}
    return {"seconds": round(time.perf_counter() - start, 2), **info}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-docs", type=int, default=476, help="WEB chapters in the 1x corpus (the bundled: 951)")
    ap.add_argument("--sizes", default="1,4,16", help="multiples of the base corpus")
    ap.add_argument("--pretrain-steps", type=int, default=5, help="pre-training steps at each size")
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--child", choices=["build", *STAGES], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--times", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "build":
        return print(json.dumps(build(args.base_docs, args.times, args.work / "own")))
    if args.child:
        with peaks() as sampled:  # the stage's own memory apart from mapped files' pages (bench.memory)
            result = stage(args.child, args.work)
        return print(json.dumps({**result, **sampled}))

    sizes, rows = [int(s) for s in args.sizes.split(",")], {}
    parent_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    env = {**os.environ, "BENCH_PRETRAIN_STEPS": str(args.pretrain_steps)}
    child = [sys.executable, "-m", "bench.stream"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            work = Path(tmp, f"{n}x")
            built, _ = run_child([*child, "--child", "build", "--work", str(work), "--base-docs", str(args.base_docs),
                                  "--times", str(n)], env)  # fmt: skip
            per = {}
            for name in STAGES:
                result, peak = run_child([*child, "--child", name, "--work", str(work)], env)
                per[name] = {**result, "peak_memory_mb": peak}
            rows[f"{n}x"] = {**built, "stages": per}
    first, last = rows[f"{sizes[0]}x"]["stages"], rows[f"{sizes[-1]}x"]["stages"]
    report = {
        **provenance("bench.stream", argv),
        "base_documents": args.base_docs,
        "sizes": rows,
        "mb_growth": round(rows[f"{sizes[-1]}x"]["mb"] / rows[f"{sizes[0]}x"]["mb"], 3),
        "peak_memory_growth": {k: round(last[k]["peak_memory_mb"] / first[k]["peak_memory_mb"], 3) for k in STAGES},
        # max RSS counts the pages of the memory-mapped datasets each stage reads; its own memory is the test
        "peak_anon_growth": {
            k: round(last[k]["peak_anon_mb"] / first[k]["peak_anon_mb"], 3)
            for k in STAGES
            if "peak_anon_mb" in last[k]
        },
        "parent_peak_memory_mb": {
            "start": parent_start,
            "end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        },
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    if (result := main()) is not None:
        print(json.dumps(result, indent=2))
