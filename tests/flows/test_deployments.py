"""The repo's prefect.yaml, deployed with `prefect deploy` to a real server, run by a real `process` worker.

A run is triggered as the UI's Run button does (a flow run created from the deployment), against a toy DVC project,
and a `prefect worker start --run-once` in a subprocess picks it up and runs it to completion.
"""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.flows.test_pipeline_flow import task_runs

REPO = Path(__file__).resolve().parents[2]
POOL = "pipeline"  # prefect.yaml's work pool
WORKER_TIMEOUT_S = 300  # the toy run takes ~1 min on a busy 2-core machine: worker start, flow start, one dvc exp run


def prefect_cli(*args: str, timeout: float) -> str:
    """Run the `prefect` CLI of this environment from the repo root, as a user would; return its output."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def deployments(prefect_server: str) -> dict[str, object]:
    """The work pool created and prefect.yaml deployed (`prefect deploy --all`); deployment name -> deployment."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    prefect_cli("deploy", "--all", timeout=180)
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def test_prefect_yaml_deploys_a_paused_nightly_schedule_an_adhoc_and_a_reproduce_deployment(deployments) -> None:
    assert set(deployments) == {"nightly", "adhoc", "any-commit", "batch"}
    assert deployments["batch"].entrypoint == "flows/predict.py:predict"
    assert deployments["batch"].parameter_openapi_schema["required"] == ["input"]  # the UI asks for the file
    nightly, adhoc = deployments["nightly"], deployments["adhoc"]
    assert deployments["any-commit"].entrypoint == "flows/reproduce.py:reproduce"
    assert deployments["any-commit"].parameter_openapi_schema["required"] == ["rev"]  # the UI asks for it
    assert nightly.entrypoint == adhoc.entrypoint == "flows/pipeline.py:pipeline"
    assert nightly.work_pool_name == adhoc.work_pool_name == POOL

    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert schedule.active is False  # nothing runs until someone turns the schedule on
    assert adhoc.schedules == []

    # The worker runs the flow in the checkout `prefect deploy` ran from, not in a temp dir.
    assert adhoc.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]


def test_a_worker_runs_an_adhoc_run_triggered_through_the_api(
    deployments, make_dvc_project: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_dvc_project(tmp_path / "project")
    with get_client(sync_client=True) as client:
        # What the UI's "Run" and `prefect deployment run pipeline/adhoc -p ...` do.
        flow_run = client.create_flow_run_from_deployment(
            deployments["adhoc"].id, parameters={"root": str(root), "params": {"x.y": 3}}
        )

    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process", "--run-once"],
        cwd=tmp_path,  # the worker's own directory does not matter: the deployment says where the code is
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
        assert state.is_completed(), f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert [r.name for r in task_runs(flow_run.id, expected=1)] == ["exp_run"]
    assert not (root / "prepared.txt").exists()  # the experiment ran in a temporary copy; its results are below
    assert {a.key for a in artifacts} == {
        "evaluation-report",
        "evaluation-metrics",
        "gate-reports",
        "gate-expectations",
        "study-report",
    }
    by_key = {a.key: a for a in artifacts}
    assert json.loads(by_key["evaluation-metrics"].data)[0] == {
        "run": "large",
        "accuracy": 1.5,
        "macro_f1": 0.5,
        "trainable_params": 10,
    }
