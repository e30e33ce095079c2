"""bench.tokenize_memory: does the tokenize stage's peak memory grow with the corpus? (issue 10: streaming)

    python -m bench.tokenize_memory                                   # 1x and 8x data/2_clean/corpus (minutes)
    python -m bench.tokenize_memory --corpus C --task T --sizes 1,2 --out /tmp/m.json

A check, not a timed test. The corpus (data/2_clean/corpus unless --corpus) is replicated N times (its documents
repeated, ids made unique) into a temp folder by a subprocess of its own: Linux carries a process's max RSS across
fork and exec, so a parent that had held the corpus would raise every child's reading. Then stages.tokenize.run,
with params.yaml's `tokenize:`, runs on it in a fresh subprocess, writing into that temp folder, and its peak RSS
(os.wait4's ru_maxrss) is recorded per size. RSS counts the pages of memory-mapped files that were read (the corpus,
the encoded ids), which the kernel can drop at will; so the child also samples the peaks of RssAnon (the process's
own memory: what must fit) and RssFile (mapped file pages) apart (bench.memory). The task
(data/1_ingest/task unless --task) is the same at every size. Writes --out (default
reports/bench/tokenize_memory.json): the peaks, seconds and blocks per size, and the growth from the first size to
the last.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from bench.memory import peaks, run_child
from stages.common import write_json

CORPUS = Path("data/2_clean/corpus")
TASK = Path("data/1_ingest/task")
REPORT = Path("reports/bench/tokenize_memory.json")


def child(corpus: Path, task: Path, out: Path) -> None:
    """Runs in the subprocess: the stage on `corpus`; seconds, blocks and sampled peaks printed as the last line."""
    from stages.common import load_params
    from stages.tokenize import TokenizeParams, run

    with peaks() as sampled:  # peak_anon_mb, peak_file_mb
        start = time.perf_counter()
        metrics = run(load_params("tokenize", TokenizeParams), corpus, task, out / "out", out / "metrics.json")
        seconds = round(time.perf_counter() - start, 1)
    print(json.dumps({"seconds": seconds, "blocks": metrics["blocks"], **sampled}))


def measure(corpus: Path, task: Path, out: Path) -> dict:
    """{seconds, blocks, peak_*_mb} of one run of the stage in a fresh process."""
    cmd = [sys.executable, "-m", "bench.tokenize_memory", "--child", str(out), "--corpus", str(corpus)]
    cmd += ["--task", str(task)]
    result, peak = run_child(cmd)
    return {**result, "peak_memory_mb": peak}


def replicate(corpus: Path, n: int, dest: Path) -> None:
    """The corpus's documents n times over (ids suffixed with the copy's number), saved to dest."""
    from datasets import concatenate_datasets, load_from_disk

    docs = load_from_disk(str(corpus))
    copies = [
        docs.map(lambda r, k=k: {"id": f"{r['id']}~{k}"}) if "id" in docs.column_names else docs for k in range(n)
    ]
    concatenate_datasets(copies).save_to_disk(dest)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tokenize_memory", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--task", type=Path, default=TASK)
    ap.add_argument("--sizes", default="1,8", help="multiples of the corpus")
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--replicate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child(args.corpus, args.task, args.child)
    if args.replicate is not None:
        return replicate(args.corpus, args.replicate, args.dest)
    sizes, rows = [int(s) for s in args.sizes.split(",")], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            src = Path(tmp, f"corpus{n}")
            cmd = [sys.executable, "-m", "bench.tokenize_memory", "--replicate", str(n), "--corpus", str(args.corpus)]
            subprocess.run([*cmd, "--dest", str(src)], check=True, stdout=subprocess.DEVNULL)
            rows[f"{n}x"] = {"corpus_mb": round(sum(f.stat().st_size for f in src.rglob("*")) / 1e6, 1),
                             **measure(src, args.task, Path(tmp, f"run{n}"))}  # fmt: skip
            print(f"{n}x: {rows[f'{n}x']}", flush=True)
    first, last = rows[f"{sizes[0]}x"], rows[f"{sizes[-1]}x"]
    report = {
        "sizes": rows,
        "growth_mb": last["peak_memory_mb"] - first["peak_memory_mb"],
        "parent_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,  # the floor it passes on
        **provenance("bench.tokenize_memory", argv),
    }
    write_json(report, args.out)
    print(f"peak RSS {first['peak_memory_mb']} MB at {sizes[0]}x -> {last['peak_memory_mb']} MB at {sizes[-1]}x "
          f"-> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
