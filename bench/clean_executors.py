"""bench.clean_executors: clean's local, Ray and Slurm executors on one corpus with the same tasks and workers: wall
time, and whether each writes the local executor's bytes.

    python -m bench.clean_executors --src /work/main/data/1_ingest/corpus   # reports/bench/clean_executors.json
    python -m bench.clean_executors --src data/tiny --executors local --out /tmp/e.json      # seconds (for tests)

--src defaults to data/1_ingest/corpus, what the stage reads (`dvc repro ingest` writes it: 1,902 chapters). Ray and
Slurm run on this machine (bench/clusters.py): a Ray head with --cpus CPUs, then a one-node Slurm (as root it
installs Debian's slurm-wlm and munge if missing), each started before its run and stopped after. Each executor
runs stages.clean.run in a fresh subprocess (the stage is the Ray driver, the Slurm submitter) with params.yaml's
`clean:` but --tasks/--workers, `slurm.partition: cpu` (the local cluster's) and `slurm.venv_path` this venv.

Per executor: seconds (the stage's own, load to written), datatrove_seconds (its pipelines), process_seconds (the
subprocess, imports included), and for Ray and Slurm the cluster's start time (not in seconds), vs_local
(seconds / local's) and identical_to_local: every output file but meta.json (it records the executor) byte for
byte, and the metrics equal but for the measurements. Ratios are what to read: the seconds depend on the host's
load, recorded with it.
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench import provenance
from stages.common import MEASURED, write_json
from stages.presets import load_params

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path("reports/bench/clean_executors.json")
SLURM_POLL = 30  # seconds between stages.clean's checks of a Slurm chain: its time is rounded up to the next check


def differing_files(a: Path, b: Path, skip: tuple = ("meta.json",)) -> list[str]:
    """Files (relative paths) whose bytes differ between two output folders, or that one of them lacks.

    a: {x: b'1', y: b'2'}, b: {x: b'1', y: b'3', z: b''} -> ['y', 'z']
    """

    def read(root: Path) -> dict[str, bytes]:
        return {
            str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file() and f.name not in skip
        }

    x, y = read(a), read(b)
    return sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))


def without_measurements(node):
    """Metrics with the measurements of one execution (MEASURED) taken out, at any depth:
    {'documents_out': 3, 'seconds': 2.1, 'datatrove': {'seconds': 1.9}} -> {'documents_out': 3, 'datatrove': {}}
    """
    if isinstance(node, dict):
        return {k: without_measurements(v) for k, v in node.items() if k not in MEASURED}
    return node


def versus_local(row: dict, local: dict, differing: list[str]) -> dict:
    """One executor's run against the local one's: its time ratio, and whether its output files (`differing`: those
    that are not byte-identical) and metrics (but for the measurements) are the same."""
    metrics_equal = without_measurements(row["metrics"]) == without_measurements(local["metrics"])
    return {
        "vs_local": round(row["seconds"] / local["seconds"], 3),
        "identical_to_local": not differing and metrics_equal,
        "differing_files": differing,
        "metrics_equal_to_local": metrics_equal,
    }


def params_for(executor: str, tasks: int, workers: int):
    """params.yaml's clean: for one executor, with the bench's tasks/workers and the local Slurm cluster."""
    from stages.clean import CleanParams

    p = load_params("clean", CleanParams, ROOT / "params.yaml")
    venv = Path(sys.executable).parent / "activate"
    slurm = dataclasses.replace(p.slurm, partition="cpu", venv_path=str(venv) if venv.exists() else None)
    return dataclasses.replace(p, executor=executor, tasks=tasks, workers=workers, slurm=slurm)


def child(params: Path, src: Path, out: Path) -> None:
    """Runs in the subprocess: stages.clean.run with the params file's clean:, metrics to out/metrics.json."""
    from stages.clean import CleanParams, run

    run(load_params("clean", CleanParams, params), src, out / "out", out / "metrics.json")


def measure(executor: str, p, src: Path, out: Path, env: dict) -> dict:
    """One child run of the stage: {seconds, datatrove_seconds, process_seconds, metrics}."""
    out.mkdir(parents=True)
    (out / "params.yaml").write_text(yaml.safe_dump({"clean": dataclasses.asdict(p)}))
    cmd = [sys.executable, "-m", "bench.clean_executors", "--child", str(out / "params.yaml"), "--src", str(src)]
    start = time.perf_counter()
    done = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{executor}: the stage failed ({done.returncode}):\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "seconds": metrics["seconds"],
        "datatrove_seconds": metrics["datatrove"]["seconds"],
        "process_seconds": round(time.perf_counter() - start, 2),
        "metrics": metrics,
    }


@contextmanager
def cluster(executor: str, cpus: int) -> Iterator[dict]:
    """The environment in which the stage finds the executor's cluster, started for the block ({} for local)."""
    from bench.clusters import ray_head, slurm_local

    if executor == "ray":
        with ray_head(num_cpus=cpus) as address:
            yield {"RAY_ADDRESS": address}
    elif executor == "slurm":
        with slurm_local() as conf:
            yield {"SLURM_CONF": conf}
    else:
        yield {}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=Path("data/1_ingest/corpus"), help="a saved `datasets` corpus")
    ap.add_argument("--executors", default="local,ray,slurm", help="local first: the others are compared to it")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="the Ray head's CPUs (Slurm's node: all)")
    ap.add_argument("--note", default="", help="what else ran on the host, for the report")
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.src, args.out)

    from datasets import load_from_disk

    executors = args.executors.split(",")
    if executors[0] != "local" or not set(executors) <= {"local", "ray", "slurm"}:
        ap.error("--executors: local first, then any of ray, slurm")
    src = args.src.absolute()
    corpus = load_from_disk(str(src))
    mb = sum(len(t.encode()) for batch in corpus.iter(batch_size=1024) for t in batch["text"]) / 1e6
    load_start, rows = os.getloadavg()[0], {}
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        for name in executors:
            start = time.perf_counter()
            with cluster(name, args.cpus) as found:
                started = round(time.perf_counter() - start, 2)
                env = {**os.environ, **found, "PYTHONPATH": str(ROOT)}  # Slurm's jobs import this checkout
                p = params_for(name, args.tasks, args.workers)
                rows[name] = measure(name, p, src, Path(tmp, name), env)
            if name != "local":
                rows[name]["cluster_start_seconds"] = started
                diff = differing_files(Path(tmp, "local", "out"), Path(tmp, name, "out"))
                rows[name].update(versus_local(rows[name], rows["local"], diff))
        kept = rows["local"]["metrics"]["documents_out"]
    for row in rows.values():
        del row["metrics"]
    report = {
        **provenance("bench.clean_executors", argv),
        "corpus": {"src": str(args.src), "documents": len(corpus), "mb": round(mb, 3), "documents_kept": kept},
        "tasks": args.tasks,
        "workers": args.workers,
        "executors": rows,
        "notes": [
            "seconds: stages.clean.run's own (load to written); cluster start times apart",
            f"slurm: stages.clean checks the chain of array jobs every {SLURM_POLL} s, so its seconds are rounded "
            "up to the next check; its workers setting is unused (Slurm runs as many tasks as the node has CPUs)",
            "ray: one actor per task, each loading the steps' models (spaCy, lingua) again",
        ],
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "niceness": os.nice(0),
            "host": args.note or "not stated",
            "load_avg_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
    }
    write_json(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
