"""bench.clean_memory: which of clean's datatrove pipelines holds more memory as the corpus grows?

    python -m bench.clean_memory                                    # 1x and 16x the bundled corpus (~20 min)
    python -m bench.clean_memory --base-docs 8 --sizes 1,2 --out /tmp/m.json   # seconds (for tests)

bench.clean measures the whole stage's peak RSS, which cannot say which step grows. Here each of the stage's
pipelines (stages.clean.pipelines: filter, exact_signatures, exact_find, minhash_signatures, minhash_buckets,
minhash_cluster, kept) runs in its own subprocess, in order, on the same work folder, with params.yaml's `clean:`
(tasks 1, workers 1: one process), and its peak RSS (os.wait4's ru_maxrss) is recorded per size. The input is
bench.clean's: the first --base-docs chapters, and N-1 copies with ~1% of words replaced, built in a child process
of its own, since Linux carries a parent's peak RSS into every child it starts (a parent holding the corpus gave
every pipeline a floor that grew with it, 213 MB at 1x and 1,011 MB at 16x, when this bench first ran).
Writes reports/bench/clean_memory.json: peak MB per pipeline per size and each one's growth from the first size to
the last.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from bench.clean import build_in_child
from bench.memory import peaks, run_child
from stages.common import write_json
from stages.presets import load_params

REPORT = Path("reports/bench/clean_memory.json")


def child(index: int, src: Path, work: Path) -> None:
    """Runs in the subprocess: pipeline number `index` of the stage, on `src`, handing over through `work`."""
    from stages.clean import CleanParams, executor, pipelines

    p = dataclasses.replace(load_params("clean", CleanParams), tasks=1, workers=1)
    name, pipeline, tasks = pipelines(p, src, work)[index]
    start = time.perf_counter()
    with peaks() as sampled:  # its own memory apart from the mapped input's pages (bench.memory)
        executor(p, name, pipeline, tasks, work / "logs").run()
    print(json.dumps({"name": name, "seconds": round(time.perf_counter() - start, 2), **sampled}))


def measure(index: int, src: Path, work: Path) -> dict:
    """{name, seconds, peak_memory_mb} of one pipeline run in a fresh process."""
    cmd = [sys.executable, "-m", "bench.clean_memory", "--child", str(index), "--src", str(src), "--work", str(work)]
    result, peak = run_child(cmd)
    return {**result, "peak_memory_mb": peak}


def main(argv: list[str] | None = None) -> dict | None:
    from stages.clean import CleanParams, pipelines

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-docs", type=int, default=1902, help="chapters in the 1x corpus (the bundled one: 1902)")
    ap.add_argument("--sizes", default="1,16", help="multiples of the base corpus")
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.src, args.work)

    sizes = [int(s) for s in args.sizes.split(",")]
    p = load_params("clean", CleanParams)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            src, work = Path(tmp, f"in{n}"), Path(tmp, f"work{n}")
            built = build_in_child(args.base_docs, n, src)  # in its own process: this one's RSS stays the same
            count = len(pipelines(p, src, work))
            runs = [measure(i, src, work) for i in range(count)]
            per = {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in runs}
            rows[f"{n}x"] = {**built, "pipelines": per}
    first, last = rows[f"{sizes[0]}x"]["pipelines"], rows[f"{sizes[-1]}x"]["pipelines"]
    report = {
        **provenance("bench.clean_memory", argv),
        "base_documents": rows[f"{sizes[0]}x"]["documents"] // sizes[0],
        "sizes": rows,
        f"peak_memory_growth_{sizes[-1] // sizes[0]}x": {
            k: round(last[k]["peak_memory_mb"] / first[k]["peak_memory_mb"], 3) for k in first
        },
        f"peak_anon_growth_{sizes[-1] // sizes[0]}x": {
            k: round(last[k]["peak_anon_mb"] / first[k]["peak_anon_mb"], 3) for k in first if "peak_anon_mb" in last[k]
        },
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    write_json(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
