"""Run the whole pipeline (`dvc repro`) and print how long each stage took.

    python -m scripts.repro            # = dvc repro, plus a per-stage time table
    python -m scripts.repro finetune   # any `dvc repro` arguments pass through

DVC prints "Running stage 'NAME':" as each stage starts; the time to the next such line (or the end) is that
stage's wall time, DVC's own bookkeeping included. The table is also written to reports/repro_times.json.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    # The stages' `python -m ...` must be this environment's python, whether or not it is activated.
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
    cmd = ["dvc", "repro", *sys.argv[1:]]
    start = time.perf_counter()
    times, current, t0 = {}, None, start
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    for line in proc.stdout:
        sys.stdout.write(line)
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            now = time.perf_counter()
            if current:
                times[current] = round(now - t0, 1)
            current, t0 = m.group(1), now
    code = proc.wait()
    end = time.perf_counter()
    if current:
        times[current] = round(end - t0, 1)
    total = round(end - start, 1)
    print(f"\n{'stage':<24}{'seconds':>10}")
    for name, seconds in times.items():
        print(f"{name:<24}{seconds:>10.1f}")
    print(f"{'total (dvc repro)':<24}{total:>10.1f}")
    Path("reports").mkdir(exist_ok=True)
    Path("reports/repro_times.json").write_text(json.dumps({"stages": times, "total_seconds": total}, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
