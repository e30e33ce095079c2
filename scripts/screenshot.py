"""docs/prefect.md's Prefect UI screenshot, end to end: a Prefect server (UI on), a flow run, headless Chromium.

    python -m scripts.screenshot                       # the tiny pipeline (tests' TINY config), ~4 min on 2 cores
    python -m scripts.screenshot --project .           # this checkout's own pipeline instead
    python -m scripts.screenshot --out docs/prefect-flow-run.png

It starts `prefect server start` on 127.0.0.1 and a free port with a throwaway PREFECT_HOME, runs the `pipeline`
flow (flows/pipeline.py) in a copy of this project shrunk to the tests' tiny sizes (or in --project), finds the
flow run through the Prefect API, and has headless Chromium (Debian: `apt-get install chromium`; or --chromium)
load the run's page in the UI and write the PNG. Nothing is reused from an earlier server: the picture is of the
run it just made.
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(given: str | None) -> str:
    for name in [given] if given else CHROMIUMS:
        if path := shutil.which(name):
            return path
    sys.exit(f"error: no headless Chromium found (tried {', '.join([given] if given else CHROMIUMS)}); install one "
             "(Debian/Ubuntu: apt-get install chromium) or pass --chromium /path/to/chrome")  # fmt: skip


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Return once `url` answers 200; RuntimeError (with the server's log tail) if the server exits or times out.

    Shared with the flow tests' server fixture (tests/flows/conftest.py)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


async def latest_flow_run_id(api_url: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    if not runs:
        sys.exit(f"error: the server at {api_url} has no flow run")
    return str(runs[0].id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "prefect-flow-run.png")
    parser.add_argument("--project", type=Path, help="run the flow in this DVC project (default: a tiny copy)")
    parser.add_argument("--chromium", help="the Chromium/Chrome binary (default: the first on PATH)")
    parser.add_argument("--size", default="1600,1100", help="window size WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)

    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
        home = tmp / "prefect_home"
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
               "PREFECT_UI_API_URL": api_url, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
               "GX_ANALYTICS_ENABLED": "false"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        home.mkdir()
        log = tmp / "server.log"
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        with open(log, "w") as f:
            server = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_healthy(f"{api_url}/health", server, log)
            except RuntimeError as e:
                sys.exit(f"error: {e}")
            env["PREFECT_API_URL"] = api_url
            if args.project:
                project = args.project.resolve()
            else:
                from tests.conftest import make_project

                project = make_project(Path(tempfile.mkdtemp(prefix="tiny-", dir=tmp)))
            print(f"running the pipeline flow in {project} against {api_url}", flush=True)
            flow = subprocess.run([sys.executable, "-m", "flows.pipeline", "--root", str(project)], env=env,
                                  cwd=ROOT)  # fmt: skip
            if flow.returncode:
                print(f"warning: the flow run failed ({flow.returncode}); the screenshot shows the failure")
            os.environ.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home))
            run_id = asyncio.run(latest_flow_run_id(api_url))
            page = f"{ui_url}/runs/flow-run/{run_id}"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            partial = args.out.with_name(f".{args.out.name}.tmp.png")
            shot = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp / 'chromium'}", f"--window-size={args.size}",
                    "--virtual-time-budget=20000", f"--screenshot={partial}", page]  # fmt: skip
            subprocess.run(shot, check=True, capture_output=True, timeout=180)
            if not partial.exists() or partial.read_bytes()[:4] != b"\x89PNG":
                sys.exit(f"error: Chromium wrote no PNG for {page}")
            partial.replace(args.out)
            print(f"{args.out}: {page}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
