"""Classify a file with the released model as a Prefect flow (deployment `predict/batch` in prefect.yaml).

    python -m flows.predict data/own/new_verses.txt                   # -> predictions/new_verses.jsonl
    prefect deployment run predict/batch -p input=data/own/new_verses.txt -p out=predictions/new.csv

One task, `classify`, runs the command a user would type, `python -m stages.predict <input> --model <model> --out
<out>`, in `root` (the checkout), with its output in the task's log; a bad input fails the task with predict's own
one-line message. The flow then publishes the label counts as a table artifact (`predict-labels`). No ML here: the
command does the work (stages/predict.py, specialist/predict.py).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE


class PredictFailed(RuntimeError):
    """`python -m stages.predict` exited non-zero; the message is its error line."""


@task(retries=0, cache_policy=NO_CACHE)
def classify(input: str, out: str, model: str, column: str, root: Path) -> dict:
    """Run `python -m stages.predict` in root; return its counts (texts, truncated, labels, model)."""
    cmd = [sys.executable, "-m", "stages.predict", input, "--model", model, "--out", out, "--column", column]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    logger = get_run_logger()
    for line in done.stderr.splitlines():
        logger.info(line)
    if done.returncode != 0:
        raise PredictFailed((done.stderr.strip().splitlines() or [f"exited with {done.returncode}"])[-1])
    return json.loads(done.stderr.strip().splitlines()[-1])  # predict's last stderr line: its counts


@flow(name="predict")
def predict(input: str, out: str | None = None, model: str = "models/release", column: str = "text",
            root: Path | None = None) -> dict:  # fmt: skip
    """Classify `input` (a path relative to root: .txt one text per line, or a table's `column`) with `model`,
    writing `out` (default predictions/<input's stem>.jsonl; .csv for CSV); returns predict's counts."""
    root = (root or Path.cwd()).resolve()
    out = out or f"predictions/{Path(input).name.split('.')[0]}.jsonl"
    counts = classify(input, out, model, column, root)
    rows = [{"label": label, "texts": n} for label, n in sorted(counts["labels"].items())]
    create_table_artifact(rows, key="predict-labels", description=f"{input} with {model}: texts per label -> {out}")
    get_run_logger().info("%s texts (%s truncated) -> %s", counts["texts"], counts["truncated"], out)
    return {**counts, "out": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="a file of texts, relative to --root")
    ap.add_argument("--out", default=None, help="where to write (default: predictions/<input stem>.jsonl)")
    ap.add_argument("--model", default="models/release", help="a run's folder (default: %(default)s)")
    ap.add_argument("--column", default="text", help="a table's text column (default: %(default)s)")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout (default: cwd)")
    a = ap.parse_args(argv)
    state = predict(a.input, a.out, a.model, a.column, a.root, return_state=True)
    if not state.is_completed():
        raise SystemExit(state.message)


if __name__ == "__main__":
    main()
