"""The pipeline flow against a real Prefect server and a real (toy) DVC project: tasks are DVC's stages in DVC's
order, runs are recorded by both Prefect and DVC, failures stop the flow, overrides become DVC experiments and the
evaluation is published as artifacts.
"""

import argparse
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.client.schemas.sorting import TaskRunSort
from prefect.states import State

from flows.pipeline import parse_override, pipeline, stage_tasks
from tests.flows.conftest import TOY_ORDER, dvc

SERVER_SETTLE_S = 30  # task runs and logs reach the server as events/batches, a little after the flow returns


def dry_run_order(root: Path) -> list[str]:
    """The stages `dvc repro` runs, in its order: the reference the flow must match (--force: all of them)."""
    return re.findall(r"^Running stage '(.+)':$", dvc(root, "repro", "--dry", "--force"), flags=re.MULTILINE)


def task_runs(flow_run_id: UUID, expected: int) -> list[TaskRun]:
    """The flow run's task runs in start order, once `expected` of them have reached a final state."""
    deadline = time.monotonic() + SERVER_SETTLE_S
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
            if (len(runs) >= expected and all(r.state and r.state.is_final() for r in runs)) or (
                time.monotonic() > deadline
            ):
                return runs
            time.sleep(0.5)


def flow_logs(flow_run_id: UUID, *needles: str) -> list[str]:
    """The flow run's log messages, once a message containing each of `needles` has arrived (logs come in batches)."""
    deadline = time.monotonic() + SERVER_SETTLE_S
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            messages = [log.message for log in logs]
            if all(any(n in m for m in messages) for n in needles) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def run_flow(root: Path, **kwargs: Any) -> tuple[State, UUID]:
    state = pipeline(root=root, return_state=True, **kwargs)
    return state, state.state_details.flow_run_id


@pytest.fixture(scope="module")
def completed_run(
    prefect_server: str, make_dvc_project: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, State, UUID]:
    """One successful run of the flow on a fresh toy project (read by several tests)."""
    root = make_dvc_project(tmp_path_factory.mktemp("completed"))
    state, flow_run_id = run_flow(root)
    return root, state, flow_run_id


def test_tasks_are_dvc_stages_in_dvc_order(make_dvc_project: Callable[..., Path], tmp_path: Path) -> None:
    root = make_dvc_project(tmp_path / "project")
    tasks = stage_tasks(root)
    assert list(tasks) == dry_run_order(root) == TOY_ORDER
    assert [t.name for t in tasks.values()] == TOY_ORDER

    # A stage appended to dvc.yaml but needed by `evaluate` runs before it: the order is the graph's, not the file's.
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc_yaml["stages"]["baseline"] = {
        "cmd": "python -c \"open('baseline.txt', 'w').write('0')\"",
        "deps": ["prepared.txt"],
        "outs": ["baseline.txt"],
    }
    dvc_yaml["stages"]["evaluate"]["deps"].append("baseline.txt")
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False, width=1000))
    expected = ["prepare", "gate_prepare", "train@small", "train@large", "baseline", "evaluate"]
    assert list(stage_tasks(root)) == dry_run_order(root) == expected


def test_flow_runs_each_stage_as_a_task_through_dvc(completed_run: tuple[Path, State, UUID]) -> None:
    root, state, flow_run_id = completed_run
    assert state.is_completed(), state.message
    assert state.result() == dict.fromkeys(TOY_ORDER, "reproduced")

    runs = task_runs(flow_run_id, expected=len(TOY_ORDER))
    assert [r.name for r in runs] == TOY_ORDER
    assert all(r.state.is_completed() for r in runs)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed()

    # The stages' own output reached the task logs.
    messages = flow_logs(flow_run_id, "gate prepare: ok", "Running stage 'train@large':")
    assert "gate prepare: ok" in messages
    assert "Running stage 'train@large':" in messages

    # DVC recorded every stage, and a second run finds nothing to do.
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == set(TOY_ORDER)
    again, _ = run_flow(root)
    assert again.is_completed(), again.message
    assert again.result() == dict.fromkeys(TOY_ORDER, "up to date")


def test_failing_stage_fails_the_flow_and_stops_downstream(
    prefect_server: str, make_dvc_project: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_dvc_project(tmp_path / "project", params={"gate": {"min_n": 100}})  # prepare writes 5
    state, flow_run_id = run_flow(root)

    assert state.is_failed()
    assert "gate prepare failed: expect_n_at_least_min_n: n=5" in state.message
    with get_client(sync_client=True) as client:
        server_state = client.read_flow_run(flow_run_id).state
    assert server_state.is_failed()
    assert "gate prepare failed" in server_state.message

    runs = task_runs(flow_run_id, expected=2)
    assert [r.name for r in runs] == ["prepare", "gate_prepare"]  # train@* and evaluate never started
    assert runs[0].state.is_completed() and runs[1].state.is_failed()
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"prepare"}


def test_params_override_runs_a_dvc_experiment(
    prefect_server: str, make_dvc_project: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_dvc_project(tmp_path / "project")
    state, flow_run_id = run_flow(root, params={"x.y": 3})
    assert state.is_completed(), state.message
    assert [r.name for r in task_runs(flow_run_id, expected=1)] == ["exp_run"]

    experiments = [
        rev for baseline in json.loads(dvc(root, "exp", "show", "--json")) for rev in experiment_revs(baseline)
    ]
    assert [rev["name"] for rev in experiments] == [state.result()["exp_run"]]
    assert experiments[0]["data"]["params"]["params.yaml"]["data"]["x"]["y"] == 3
    large = experiments[0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["runs"]["large"]
    assert large["accuracy"] == 1.5  # prepare.n * x.y * scale / 100 = 5 * 3 * 10 / 100: the override reached DVC
    # ran in a temporary copy: the workspace, params.yaml included, is as committed
    assert not (root / "prepared.txt").exists()
    assert yaml.safe_load((root / "params.yaml").read_text())["x"]["y"] == 1
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == ""

    state, _ = run_flow(root)  # the next (scheduled) run: the committed params
    assert state.is_completed(), state.message
    assert (root / "prepared.txt").read_text() == "5"


def experiment_revs(baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """The experiment revisions under one baseline entry of `dvc exp show --json`."""
    return [rev for exp in baseline.get("experiments") or [] for rev in exp.get("revs", [])]


def test_flow_publishes_evaluation_and_gate_artifacts(completed_run: tuple[Path, State, UUID]) -> None:
    root, _, flow_run_id = completed_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {
        "evaluation-report",
        "evaluation-metrics",
        "gate-reports",
        "gate-expectations",
        "study-report",
    }
    assert by_key["study-report"].data == (root / "reports" / "study.md").read_text()

    assert by_key["evaluation-report"].type == "markdown"
    assert by_key["evaluation-report"].data == (root / "reports" / "evaluate.md").read_text()

    metrics = json.loads(by_key["evaluation-metrics"].data)
    assert metrics == [
        {"run": "large", "accuracy": 0.5, "macro_f1": 0.5, "trainable_params": 10},
        {"run": "small", "accuracy": 0.05, "macro_f1": 0.5, "trainable_params": 10},
    ]
    gates = json.loads(by_key["gate-reports"].data)
    assert gates == [{"gate": "prepare", "success": True, "expectations": 1, "failed": ""}]
    expectations = json.loads(by_key["gate-expectations"].data)
    assert expectations == [
        {"gate": "prepare", "table": None, "expectation": "expect_n_at_least_min_n", "column": None,
         "success": True, "observed": "5", "bound": "null"},
    ]  # fmt: skip


def test_parse_override() -> None:
    assert parse_override("finetune.train.epochs=40") == ("finetune.train.epochs", "40")
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_override("epochs")
