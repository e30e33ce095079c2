"""Fixtures for flow tests: a real Prefect server for the session, and small real DVC projects in temp dirs.

`prefect_server` starts `prefect server start` on a free port with its own PREFECT_HOME and sqlite database, and
points this process (settings) and its children (environment) at it. It takes ~10 s to answer on a 2-core machine
and is started once per session. The UI, scheduler and late-runs services are off (the tests need none of them);
the other services must stay on: task runs reach the database through the server's task-run recorder, which
consumes the events the client sends.

`make_dvc_project(path)` builds a git + DVC repository whose stages are python one-liners that read params.yaml
(no ML), shaped like the real pipeline: a stage, its gate, a `foreach` matrix, an evaluation writing
metrics/evaluate.json and reports/evaluate.md.
"""

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

SERVER_START_TIMEOUT_S = 120  # ~10 s on an idle 2-core machine; CI runners can be several times slower

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",  # otherwise every dvc command forks a process that tries to phone home
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def py(code: str, *args: str) -> str:
    """A dvc.yaml command that runs a python one-liner (`code` must not contain double quotes)."""
    assert '"' not in code
    return " ".join([f'python -c "{code}"', *args])


# Each stage reads what it needs from params.yaml and writes a small text/json output.
LOAD = "import glob, json, os, sys, yaml; p = yaml.safe_load(open('params.yaml'))"
TOY_STAGES: dict[str, Any] = {
    "prepare": {
        "cmd": py(f"{LOAD}; open('prepared.txt', 'w').write(str(p['prepare']['n'] * p['x']['y']))"),
        "params": ["prepare", "x.y"],
        "outs": ["prepared.txt"],
    },
    "gate_prepare": {
        "cmd": py(
            f"{LOAD}; n = int(open('prepared.txt').read()); ok = n >= p['gate']['min_n']; "
            "os.makedirs('reports/gates', exist_ok=True); "
            "json.dump({'gate': 'prepare', 'success': ok, 'expectations': "
            "[{'expectation': 'expect_n_at_least_min_n', 'success': ok, 'observed': n}]}, "
            "open('reports/gates/prepare.json', 'w')); "
            "print('gate prepare:', 'ok' if ok else 'FAILED'); "
            "sys.exit(0 if ok else 'gate prepare failed: expect_n_at_least_min_n: n=%d' % n)"
        ),
        "deps": ["prepared.txt"],
        "params": ["gate"],
        "outs": [{"reports/gates/prepare.json": {"cache": False}}],
    },
    "train": {
        "foreach": "${train.runs}",
        "do": {
            "cmd": py(
                f"{LOAD}; run = sys.argv[1]; n = int(open('prepared.txt').read()); "
                "open('model_%s.txt' % run, 'w').write(str(n * p['train']['runs'][run]['scale']))",
                "${key}",
            ),
            "deps": ["prepared.txt", "reports/gates/prepare.json"],
            "params": ["train.runs.${key}"],
            "outs": ["model_${key}.txt"],
        },
    },
    "evaluate": {
        "cmd": py(
            f"{LOAD}; runs = {{f[6:-4]: {{'accuracy': int(open(f).read()) / 100, 'macro_f1': 0.5, "
            "'trainable_params': 10} for f in sorted(glob.glob('model_*.txt'))}; "
            "os.makedirs('metrics', exist_ok=True); json.dump({'runs': runs}, open('metrics/evaluate.json', 'w')); "
            "open('reports/evaluate.md', 'w').write('# Evaluation\\n\\n' + "
            "''.join('- %s: %.2f\\n' % (r, m['accuracy']) for r, m in runs.items()))"
        ),
        "deps": ["model_small.txt", "model_large.txt"],
        "metrics": [{"metrics/evaluate.json": {"cache": False}}],
        "outs": [{"reports/evaluate.md": {"cache": False}}],
    },
}
TOY_PARAMS: dict[str, Any] = {
    "prepare": {"n": 5},
    "x": {"y": 1},
    "gate": {"min_n": 1},
    "train": {"runs": {"small": {"scale": 1}, "large": {"scale": 10}}},
}
TOY_ORDER = ["prepare", "gate_prepare", "train@small", "train@large", "evaluate"]


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def dvc(root: Path, *args: str) -> str:
    """Run the dvc of this Python environment in `root`; return its stdout."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session", autouse=True)
def offline_env() -> Iterator[None]:
    """No network, no telemetry, for this process and every DVC/Prefect process it starts."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="session")
def make_dvc_project() -> Callable[..., Path]:
    """Build the toy DVC project in an empty directory and commit it; `params` updates top-level sections."""

    def make(root: Path, params: dict[str, Any] | None = None) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        git(root, "init", "-q", "-b", "main")
        # exp run commits: CI runners often have no git identity
        git(root, "config", "user.name", "flow tests")
        git(root, "config", "user.email", "flow-tests@example.com")
        dvc(root, "init", "-q")
        dvc(root, "config", "core.analytics", "false")
        (root / "params.yaml").write_text(yaml.safe_dump({**TOY_PARAMS, **(params or {})}, sort_keys=False))
        (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": TOY_STAGES}, sort_keys=False, width=1000))
        (root / "reports").mkdir(exist_ok=True)  # a committed study report, as `dvc repro study/dvc.yaml` leaves
        (root / "reports" / "study.md").write_text("# Study\n\n- a claim: holds (60.0% vs 50.0%)\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "toy pipeline")
        return root

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, offline_env: None) -> Iterator[str]:
    """A real `prefect server start` for the session; yields its API URL, which this process now uses."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    }
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    log_path = home / "server.log"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-ui", "--no-scheduler", "--no-late-runs"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(f"{api_url}/health", server, log_path)
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: home}):
            mp.setenv("PREFECT_API_URL", api_url)  # for child processes
            mp.setenv("PREFECT_HOME", str(home))
            yield api_url
    finally:
        # Send what this process still holds for the server while it is up: otherwise the log and event workers
        # retry against a dead server at interpreter exit, which holds pytest's exit for over a minute.
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    from scripts.screenshot import wait_healthy

    try:
        wait_healthy(url, server, log_path, SERVER_START_TIMEOUT_S)
    except RuntimeError as e:
        pytest.fail(str(e))
