"""The DVC pipeline as a Prefect flow: one task per `dvc.yaml` stage, each run through DVC, in DVC's order.

    python -m flows.pipeline                                   # what `dvc repro` does, one Prefect task per stage
    python -m flows.pipeline --set finetune.train.epochs=40    # what `dvc exp run -S ...` does, one task `exp_run`
    python -m flows.pipeline --root path/to/repo               # another checkout (default: the current directory)

To watch it in the UI, start a server once and point the run at it:

    prefect server start
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.pipeline
    # then open http://127.0.0.1:4200 (Runs -> the flow run: one task run per stage, logs, artifacts)

Without PREFECT_API_URL, Prefect starts a temporary server for the length of the run and the history is lost.
To schedule it, or run it from the UI, deploy it to a worker: prefect.yaml (`pipeline/nightly`, `pipeline/adhoc`).

DVC owns the graph and the record. The stage list and order come from DVC's own repro planner, so the tasks are
exactly the stages `dvc repro` would visit (gates included, `foreach` stages expanded: `finetune@full` is its own
task), in the order it would visit them. Each task runs `dvc repro --single-item <stage>`: DVC decides whether the
stage is up to date and records what ran in dvc.lock, exactly as if `dvc repro` had been typed. The stage's output
is streamed line by line into the task's log. A failing stage fails its task with the stage's last output lines in
the message, the flow run fails with it and no later stage runs. Stages run one at a time (DVC holds a repo lock
while it reproduces) and are never retried: a training run that failed will fail again.

One run per workspace: a flow run holds `.dvc/tmp/pipeline-flow.lock` from its first stage to its last, so a second
flow run in the same checkout fails at once with WorkspaceBusy, naming the run that holds it, before it touches
anything (between two stages no DVC lock is held, so DVC alone would let the second run slip in there and make the
first fail). A `dvc repro` typed in a shell meanwhile meets DVC's own locks, and the task reports that the same way.

With `params` overrides (`--set key=value`, repeatable) the flow runs the whole pipeline as ONE task, `exp_run`,
i.e. `dvc exp run --temp --set-param key=value ...`: DVC runs it in a temporary copy and records it as an experiment
(`dvc exp show` lists it, `dvc exp apply <name>` brings its params and results into the workspace). The workspace,
params.yaml included, stays as committed, so a run from the UI with other params never changes what the next
scheduled run uses. Per-stage tasks would be dishonest there: `dvc repro` of single stages records no experiment.

After the stages, the flow publishes what the pipeline reported (an experiment's: its commit's), if it exists:
reports/evaluate.md as a markdown artifact (`evaluation-report`), metrics/evaluate.json as a table of runs
(`evaluation-metrics`) and reports/gates/*.json as a table of gates (`gate-reports`) and a table of every
expectation with its pass/fail, the value observed and its bound (`gate-expectations`); and reports/study.md, the
study's claims over seeds, sizes and learning rates, when the checkout has one (`study-report`).
"""

import argparse
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dvc.commands.status import CmdDataStatus
from dvc.dvcfile import PROJECT_FILE
from dvc.repo import Repo
from dvc.repo.reproduce import get_active_graph, plan_repro
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

EXP_RAN = "Ran experiment(s): "  # how `dvc exp run` names the experiment it recorded
TAIL_LINES = 30  # of a failed stage's output, quoted in the error: enough for a traceback and DVC's verdict


DVC_LOCKED = ("is busy, it is being blocked by", "Unable to acquire lock")  # DVC's rwlock and repo lock errors
FLOW_LOCK = Path(".dvc/tmp/pipeline-flow.lock")  # in DVC's own untracked tmp folder


class StageFailed(RuntimeError):
    """A DVC command exited non-zero; the message carries its last output lines."""


class WorkspaceBusy(StageFailed):
    """Another run (a flow run or a `dvc` command) holds the workspace; nothing was changed."""


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold `root`'s flow lock for the block, or raise WorkspaceBusy naming the process that holds it.

    A flock: the kernel releases it when its holder exits, even by kill -9, so a crash leaves no stale lock.
    """
    path = root / FLOW_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not yet said who it is"
            raise WorkspaceBusy(
                f"another pipeline run holds the workspace {root} ({holder}); DVC reproduces one run per "
                "workspace at a time. Wait for it to finish, then run again (or run from another clone). "
                "Nothing was changed."
            ) from None
        f.truncate(0)
        f.write(f"PID {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {' '.join(sys.argv)}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # the lock itself goes with the file's closing


def stage_order(root: Path) -> list[str]:
    """The stages of `root`'s dvc.yaml in the order `dvc repro` reproduces them.

    This is DVC's own plan (`plan_repro`: a post-order walk of the stage graph, frozen stages cut loose from their
    dependencies), so it is the order `dvc repro` uses, not merely some topological order. Names are DVC addresses:
    `train`, `finetune@full`.
    """
    # DVC resolves targets and writes addresses relative to the cwd, as if typed in a shell there: stand in `root`
    with contextlib.chdir(root), Repo() as repo:
        stages = list(repo.stage.collect(PROJECT_FILE))
        return [stage.addressing for stage in plan_repro(get_active_graph(repo.index.graph), stages)]


def run_dvc(args: list[str], root: Path, logger: logging.Logger | logging.LoggerAdapter) -> list[str]:
    """Run `dvc <args>` in `root`, logging each output line as it comes; return the last TAIL_LINES lines.

    DVC runs from the same Python environment as this flow, and that environment's bin/ leads PATH so a stage's
    `python -m stages.x` finds the same interpreter. stdout and stderr are merged to keep their order.
    """
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",  # stage scripts print to a pipe: without this their lines arrive in blocks
    }
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
    if proc.returncode != 0:
        output = "\n".join(tail)
        if any(marker in output for marker in DVC_LOCKED):
            raise WorkspaceBusy(
                f"another run holds the workspace {root}: DVC refused `dvc {' '.join(args)}` because its lock is "
                "held (DVC's words below). Wait for that run to finish, then run again; nothing was changed.\n"
                + output
            )
        raise StageFailed(f"`dvc {' '.join(args)}` exited with {proc.returncode}; last output:\n{output}")
    return list(tail)


@task(retries=0, cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, root: Path, force: bool = False) -> str:
    """Reproduce one stage through DVC (`force`: even if up to date); return "up to date" or "reproduced"."""
    tail = run_dvc(["repro", "--single-item", *(["--force"] if force else []), stage], root, get_run_logger())
    return "up to date" if CmdDataStatus.UP_TO_DATE_MSG in tail else "reproduced"


@task(name="exp_run", task_run_name="exp_run", retries=0, cache_policy=NO_CACHE)
def exp_run(root: Path, params: dict[str, Any], force: bool = False) -> str:
    """Run the whole pipeline as one DVC experiment with `params` overridden, in a temporary copy (the workspace is
    left as it is); return the experiment's name."""
    args = ["exp", "run", "--temp", *(["--force"] if force else [])]
    for key, value in params.items():  # DVC reads values as YAML; JSON is YAML: 3, true, [1, 2]
        args += ["--set-param", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    tail = run_dvc(args, root, get_run_logger())
    names = [line.removeprefix(EXP_RAN) for line in tail if line.startswith(EXP_RAN)]
    if not names:
        raise RuntimeError(f"dvc exp run recorded no experiment; its last lines:\n{chr(10).join(tail)}")
    return names[-1]


@contextlib.contextmanager
def experiment_files(root: Path, name: str) -> Iterator[Path]:
    """The metrics/ and reports/ files of experiment `name`'s commit (git-tracked: DVC's uncached outputs), in a
    temporary folder laid out like the workspace, for publish_reports."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout

    refs = git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").decode().splitlines()
    revs = [sha for sha, ref in (line.split(" ", 1) for line in refs) if ref.rsplit("/", 1)[-1] == name]
    if not revs:
        raise RuntimeError(f"{root}: no git ref of experiment {name!r} under refs/exps")
    with tempfile.TemporaryDirectory(prefix="experiment-") as tmp:
        for path in git("ls-tree", "-r", "--name-only", revs[0], "--", "metrics", "reports").decode().splitlines():
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / path).write_bytes(git("show", f"{revs[0]}:{path}"))
        yield Path(tmp)


def stage_tasks(root: Path) -> dict[str, Task[..., str]]:
    """The flow's tasks for `root`: stage name -> `run_stage` named after the stage, in DVC's order."""
    return {stage: run_stage.with_options(name=stage) for stage in stage_order(root)}


def gate_rows(reports: list[Path]) -> list[dict[str, Any]]:
    """One table row per gate report ({gate, success, expectations: [...]}), naming the expectations that failed."""
    rows = []
    for path in reports:
        report = json.loads(path.read_text())
        expectations = report.get("expectations", [])
        failed = [str(e.get("expectation", e.get("type", "?"))) for e in expectations if not e.get("success", True)]
        rows.append(
            {
                "gate": report.get("gate", path.stem),
                "success": report.get("success"),
                "expectations": len(expectations),
                "failed": ", ".join(failed),
            }
        )
    return rows


def expectation_rows(reports: list[Path]) -> list[dict[str, Any]]:
    """One table row per expectation of every gate: pass/fail, and the value observed against its bound."""
    rows = []
    for path in reports:
        report = json.loads(path.read_text())
        for e in report.get("expectations", []):
            rows.append(
                {
                    "gate": report.get("gate", path.stem),
                    "table": e.get("table"),
                    "expectation": e.get("expectation"),
                    "column": e.get("column"),
                    "success": e.get("success"),
                    "observed": json.dumps(e.get("observed"), default=str),
                    "bound": json.dumps(e.get("bound"), default=str),
                }
            )
    return rows


def publish_reports(root: Path) -> list[str]:
    """Publish the evaluation report, its metrics, the gate reports and the study as artifacts; return their keys."""
    keys = []
    metrics, report = root / "metrics" / "evaluate.json", root / "reports" / "evaluate.md"
    if metrics.exists() and report.exists():
        create_markdown_artifact(report.read_text(), key="evaluation-report", description="reports/evaluate.md")
        runs = json.loads(metrics.read_text())["runs"]
        rows = [{"run": run, **values} for run, values in runs.items()]
        create_table_artifact(rows, key="evaluation-metrics", description="metrics/evaluate.json, one row per run")
        keys += ["evaluation-report", "evaluation-metrics"]
    gates = sorted((root / "reports" / "gates").glob("*.json"))
    if gates:
        create_table_artifact(gate_rows(gates), key="gate-reports", description="reports/gates/*.json")
        create_table_artifact(
            expectation_rows(gates), key="gate-expectations", description="every gate expectation, observed vs bound"
        )
        keys += ["gate-reports", "gate-expectations"]
    study = root / "reports" / "study.md"  # committed by `dvc repro study/dvc.yaml`, which this flow does not run
    if study.exists():
        create_markdown_artifact(study.read_text(), key="study-report", description="reports/study.md")
        keys.append("study-report")
    return keys


@flow(name="pipeline")
def pipeline(root: Path | None = None, params: dict[str, Any] | None = None, force: bool = False) -> dict[str, str]:
    """Reproduce the DVC pipeline in `root` (default: the current directory), one task per stage.

    With `params` (dotted key -> value), run it instead as one DVC experiment with those params changed, in a
    temporary copy: the workspace and its params.yaml stay as committed.
    With `force`, rerun every stage even if DVC finds it up to date (`dvc repro --force`).
    Returns stage -> "reproduced" / "up to date", or {"exp_run": the experiment's name}.
    """
    root = (root or Path.cwd()).resolve()
    with workspace_lock(root):  # a second run in this workspace fails here, before any stage
        if params:
            outcomes = {"exp_run": exp_run(root, params, force)}
            with experiment_files(root, outcomes["exp_run"]) as files:
                published = publish_reports(files)
        else:
            outcomes = {stage: stage_task(stage, root, force) for stage, stage_task in stage_tasks(root).items()}
            published = publish_reports(root)
    get_run_logger().info("stages: %s; artifacts: %s", outcomes, published or "none")
    return outcomes


def parse_override(text: str) -> tuple[str, str]:
    """`finetune.train.epochs=40` -> ("finetune.train.epochs", "40"); DVC parses the value as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the DVC repository (default: cwd)")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param and run as a DVC experiment (repeatable)",
    )
    args = parser.parse_args(argv)
    state = pipeline(root=args.root, params=dict(args.overrides), return_state=True)
    if not state.is_completed():
        raise SystemExit(state.message)  # the traceback is already in the run's log, once per task and flow


if __name__ == "__main__":
    main()
