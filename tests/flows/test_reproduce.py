"""Reproducing a commit of a toy DVC project in a temporary worktree, against a real Prefect server: a recorded
commit reproduces; a commit whose metrics were edited by hand is reported key by key; measurements are ignored.
"""

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.reproduce import Mismatch, compare, flatten, main, reproduce
from tests.flows.conftest import TOY_ORDER, dvc, git


def head(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def recorded(prefect_server: str, make_dvc_project: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory):
    """A toy project whose pipeline ran and whose results (dvc.lock, metrics, reports) were committed."""
    root = make_dvc_project(tmp_path_factory.mktemp("recorded"))
    dvc(root, "repro")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "results")
    return root


def test_recomputing_a_recorded_commit_gives_its_metrics(recorded: Path) -> None:
    sha = head(recorded)
    state = reproduce(sha, root=recorded, force=True, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result == {
        "rev": sha,
        "stages": dict.fromkeys(TOY_ORDER, "reproduced"),
        "compared": ["metrics/evaluate.json"],
    }
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=recorded, capture_output=True, text=True).stdout
    assert len(worktrees.splitlines()) == 1  # the temporary worktree is gone
    status = subprocess.run(["git", "status", "--porcelain"], cwd=recorded, capture_output=True, text=True).stdout
    assert head(recorded) == sha and status == ""  # the checkout it was started from is untouched


def test_hand_edited_metrics_are_reported_by_file_and_key(recorded: Path, tmp_path: Path) -> None:
    metrics = recorded / "metrics" / "evaluate.json"
    original = metrics.read_text()
    edited = json.loads(original)
    edited["runs"]["large"]["accuracy"] = 0.6  # the pipeline computes 0.5
    edited["runs"]["large"]["seconds"] = 99.0  # a measurement: never compared
    metrics.write_text(json.dumps(edited))
    git(recorded, "commit", "-q", "-am", "better numbers, by hand")
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["HEAD", "--root", str(recorded)])
    finally:
        git(recorded, "reset", "-q", "--hard", "HEAD~1")
    message = str(exit_.value.code)
    assert "did not reproduce" in message
    assert "metrics/evaluate.json: runs.large.accuracy: committed 0.6, reproduced 0.5" in message
    assert message.count("committed") == 1  # the other keys match

    # Only `evaluate` ran again: the other stages' outputs came from the shared DVC cache.
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(  # this run's: the newest
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["reproduction"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert "| evaluate | reproduced |" in artifact.data
    assert all(f"| {stage} | up to date |" in artifact.data for stage in TOY_ORDER[:-1])


def test_compare_ignores_measurements_and_honours_the_tolerance() -> None:
    committed = flatten({"runs": {"full": {"accuracy": 0.4, "train_seconds": 10.0}}, "perplexity": 89.3, "n": 5})
    reproduced = flatten({"runs": {"full": {"accuracy": 0.4, "train_seconds": 12.5}}, "perplexity": 89.30000001})
    assert compare("m.json", committed, reproduced, tolerance=1e-6) == [Mismatch("m.json", "n", 5, "<missing>")]
    assert compare("m.json", {"acc": 0.4}, {"acc": 0.41}, tolerance=1e-6) == [Mismatch("m.json", "acc", 0.4, 0.41)]
    assert compare("m.json", {"acc": 0.4}, {"acc": 0.41}, tolerance=0.05) == []
    assert compare("m.json", {"ok": True}, {"ok": 1}, tolerance=0.5) == [Mismatch("m.json", "ok", True, 1)]
    cold, warm = ({"translation_cache": {"pivot": {"hits": h, "misses": 224 - h}}} for h in (0, 224))
    assert compare("augment.json", flatten(cold), flatten(warm), tolerance=1e-6) == []  # inside a measurement


def test_installed_versions_that_differ_from_the_commits_lock_are_listed() -> None:
    import importlib.metadata as md

    from flows.reproduce import report, version_drift

    pyyaml = md.version("pyyaml")
    lock = f"pyyaml=={pyyaml} \\\n    --hash=sha256:x\nprefect==0.0.1 \\\n    --hash=sha256:y\nno-such-package==1.0\n"
    drift = version_drift(lock)
    assert drift == [f"prefect: the commit pins 0.0.1, installed {md.version('prefect')}",
                     "no-such-package: the commit pins 1.0, installed not installed"]  # fmt: skip
    text = report("a" * 40, {}, [], [], [], drift)
    assert "Installed versions that differ from the commit's requirements.lock (2):" in text
    assert version_drift("") == []  # a commit from before the lock: nothing to compare
