"""Local clusters for clean's Ray and Slurm executors: each started on 127.0.0.1 for a `with` block, then stopped.

    with ray_head(num_cpus=2) as address:   # a Ray head (`ray start --head --block`); set RAY_ADDRESS=address
        ...
    with slurm_local() as conf:             # one-node Slurm (scripts/slurm_local.sh); set SLURM_CONF=conf
        ...

Only what is started here is stopped: the Ray head runs in a session of its own and its process group (the head,
GCS, raylet, workers) is signalled by id; Slurm's daemons are killed by the ids in their pid files. Each cluster
keeps its state in a fresh temp folder, short because Ray's and munge's socket paths must fit in 107 bytes. Used
by tests/stages/test_clean_executors.py and bench/clean_executors.py.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"


def free_port(span: int = 1) -> int:
    """A port p on 127.0.0.1 with p .. p+span-1 all free now (Slurm takes two: slurmctld's and slurmd's)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span <= 65535 and all(_free(port + i) for i in range(1, span)):
            return port
    raise RuntimeError(f"no {span} consecutive free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session), SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
    proc.wait()


@contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 180) -> Iterator[str]:
    """A local Ray head with `num_cpus` CPUs and no dashboard; yields its address (for RAY_ADDRESS).

    Its workers run in the head's temp folder (Ray starts tasks in the folder the raylet started in, not the
    driver's), with TMPDIR there too, so what datatrove's Ray executor leaves in the system temp dir (ray_logs/)
    goes with it. A driver of this process is disconnected (ray.shutdown) before the head stops.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ray-"))
    port = free_port()
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    cmd = [cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"]
    cmd += [f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}"]
    log = tmp / "head.log"
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed (exit {head.returncode}):\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def slurm_local() -> Iterator[str]:
    """A one-node Slurm cluster (scripts/slurm_local.sh start, stop at the end); yields its SLURM_CONF path."""
    state = Path(tempfile.mkdtemp(prefix="slurm-"))
    env = {**os.environ, "SLURM_LOCAL_PORT": str(free_port(span=2))}
    try:
        done = subprocess.run([str(SLURM_SCRIPT), "start", str(state)], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{SLURM_SCRIPT.name} start failed ({done.returncode}):\n{done.stderr[-3000:]}")
        yield str(state / "slurm.conf")
    finally:
        subprocess.run([str(SLURM_SCRIPT), "stop", str(state)], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
