"""bench.predict: `python -m stages.predict` on a 10,000-line file: texts per second, peak memory, and whether it
gives the test verses the labels the pipeline's batch evaluation gave them.

    python -m bench.predict                     # models/release, data/3_tokenize/task, its run's predictions.jsonl
    python -m bench.predict --model M --reference models/7_finetune/<run>/predictions.jsonl --task T --lines 10000 \
        --out reports/bench/predict.json

The file is the task's test verses, in order, cycled to --lines lines (so its first lines are the test verses). The
command runs in a fresh process, one torch thread (OMP_NUM_THREADS=1: the machine is shared), exactly as a user
runs it; its wall time (interpreter start and model load included) and peak RSS (os.wait4's ru_maxrss) are
recorded. Texts per second is lines / wall seconds; `classify_seconds` (the batches alone) comes from a second,
in-process pass with the same calls. Parity: the label written for each test verse equals the label in the
reference predictions.jsonl (the finetune stage's, which evaluate scored; --reference, by default the one of the run
models/release was copied from, metrics/release.json).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from stages.common import write_json

MODEL = Path("models/release")
TASK = Path("data/3_tokenize/task")
REPORT = Path("reports/bench/predict.json")


def reference_labels(reference: Path, test, labels: list[str]) -> list[str]:
    """The reference run's label name for each test verse, in the split's order."""
    saved = {(r["book"], r["chapter"], r["verse"]): r["prediction"] for r in map(json.loads,
             reference.read_text().splitlines()) if r["split"] == "test"}  # fmt: skip
    return [labels[saved[k]] for k in zip(test["book"], test["chapter"], test["verse"], strict=True)]


def timed_cli(path: Path, model: Path, out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS MB) of `python -m stages.predict path --model model --out out`, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "stages.predict", str(path), "--model", str(model), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{err[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss // 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--task", type=Path, default=TASK)
    ap.add_argument("--reference", type=Path, default=None, help="predictions.jsonl of the model's run")
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=REPORT)
    a = ap.parse_args(argv)
    import torch
    from datasets import load_from_disk

    from specialist.classifier import load
    from specialist.predict import classify

    if a.reference is None:
        run = json.loads(Path("metrics/release.json").read_text())["released"]
        a.reference = Path("models/7_finetune") / run / "predictions.jsonl"
    test = load_from_disk(str(a.task / "test"))
    verses = list(test["text"])
    lines = [verses[i % len(verses)] for i in range(a.lines)]
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp, "texts.txt"), Path(tmp, "predictions.jsonl")
        path.write_text("".join(f"{t}\n" for t in lines))
        wall, peak = timed_cli(path, a.model, out)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    torch.set_num_threads(1)
    model, tokenizer = load(a.model)
    start = time.perf_counter()
    classify(model, tokenizer, lines)
    classify_s = time.perf_counter() - start
    expected = reference_labels(a.reference, test, test.features["label"].names)
    got = [r["label"] for r in rows[: len(verses)]]
    same = sum(g == e for g, e in zip(got, expected, strict=True))
    report = {
        "model": str(a.model), "reference": str(a.reference), "lines": len(rows), "threads": 1,
        "wall_seconds": round(wall, 2), "texts_per_second": round(len(rows) / wall, 1),
        "classify_seconds": round(classify_s, 2), "classify_texts_per_second": round(len(rows) / classify_s, 1),
        "peak_memory_mb": peak, "truncated": sum(r["truncated"] for r in rows),
        "test_verses": len(verses), "same_labels_as_evaluation": same,
        **provenance("bench.predict", argv),
    }  # fmt: skip
    write_json(report, a.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
