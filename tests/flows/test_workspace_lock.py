"""Two runs in one workspace: the second fails at once with a message that says another run holds the workspace,
and the first finishes normally. Real locks, held by real processes, on the toy DVC project (no Prefect server:
what is tested is the flow's lock and its reading of DVC's lock errors)."""

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flows.pipeline import WorkspaceBusy, run_dvc, workspace_lock
from tests.conftest import ROOT
from tests.flows.conftest import dvc, git, py

# `prepare`, made to wait: it says it has started, then holds DVC's locks until the test creates `go`.
WAITING_PREPARE = py(
    "import os, time; open('started', 'w').close(); "
    "any(os.path.exists('go') or time.sleep(0.05) for _ in iter(int, 1)); "
    "open('prepared.txt', 'w').write('5')"
)


@pytest.fixture
def waiting_project(make_dvc_project: Callable[..., Path], tmp_path: Path) -> Path:
    root = make_dvc_project(tmp_path / "toy")
    stages = yaml.safe_load((root / "dvc.yaml").read_text())
    stages["stages"]["prepare"]["cmd"] = WAITING_PREPARE
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False, width=1000))
    git(root, "commit", "-qam", "prepare waits for go")
    return root


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_a_dvc_lock_held_by_another_run_is_reported_as_a_busy_workspace(waiting_project: Path) -> None:
    """A real `dvc repro` holds the locks; the flow's DVC call fails with WorkspaceBusy, not a bare exit code."""
    root = waiting_project
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for(root / "started", first)
    with pytest.raises(WorkspaceBusy) as busy:
        run_dvc(["repro", "--single-item", "prepare"], root, logging.getLogger("test"))
    message = str(busy.value)
    assert message.startswith(f"another run holds the workspace {root}: DVC refused `dvc repro --single-item prepare`")
    assert "Wait for that run to finish" in message and f"(PID {first.pid})" in message  # DVC's words: who holds it
    (root / "go").touch()
    assert first.wait(timeout=120) == 0, first.stdout.read()
    assert "up to date" in dvc(root, "status")  # the first run finished every stage, untouched by the second


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flows.pipeline import workspace_lock
    with workspace_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
    """
)


def test_a_second_flow_run_in_the_workspace_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    """The flow's own lock, held by another process: a second holder is refused with its PID; a kill frees it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkspaceBusy, match=rf"another pipeline run holds the workspace .* \(PID {holder.pid}, "):
        with workspace_lock(tmp_path):
            pytest.fail("entered a workspace another run holds")
    holder.kill()  # kill -9 included: the kernel drops the lock with its holder
    holder.wait()
    with workspace_lock(tmp_path):
        pass


def test_two_flow_runs_at_once_the_second_fails_clearly_and_the_first_completes(
    waiting_project: Path, prefect_server: str
) -> None:
    """Two real `python -m flows.pipeline` runs against the session's Prefect server, in one workspace: the second
    fails naming the workspace and the first run; the first completes every stage, untouched."""
    root = waiting_project
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def flow_run() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--root", str(root)], cwd=ROOT, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    first = flow_run()
    wait_for(root / "started", first, timeout=180)  # its first stage runs, holding the workspace
    second = flow_run()
    out = second.communicate(timeout=300)[0]
    assert second.returncode != 0, out
    assert f"another pipeline run holds the workspace {root}" in out and f"(PID {first.pid}" in out, out[-3000:]
    (root / "go").touch()
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    assert "up to date" in dvc(root, "status")
