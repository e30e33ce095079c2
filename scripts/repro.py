"""Run the whole pipeline (`dvc repro`) and print how long each stage took.

    python -m scripts.repro            # = dvc repro, plus a per-stage time table
    python -m scripts.repro finetune   # any `dvc repro` arguments pass through

DVC prints "Running stage 'NAME':" as each stage starts; the time to the next such line (or the end) is that
stage's wall time, DVC's own bookkeeping included. The table is also written to reports/repro_times.json, with
`gate_seconds` (the gate_* stages together) and `gate_share` (gate_seconds / total_seconds): what the validation
gates cost the run. Only stages that ran count: run it on a clean clone (or `dvc repro -f`) for the whole pipeline.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def gate_overhead(times: dict[str, float], total: float) -> dict[str, float]:
    """The gates' seconds and their share of the run: {"gate_a": 2, "train": 6}, total 10 -> 2 s, 0.2."""
    gates = sum(seconds for name, seconds in times.items() if name.startswith("gate_"))
    return {"gate_seconds": round(gates, 1), "gate_share": round(gates / total, 4) if total else 0.0}


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
    overhead = gate_overhead(times, total)
    print(f"{'gates (gate_*)':<24}{overhead['gate_seconds']:>10.1f}  ({overhead['gate_share']:.1%} of the run)")
    record = {"stages": times, "total_seconds": total, **overhead}
    Path("reports").mkdir(exist_ok=True)
    Path("reports/repro_times.json").write_text(json.dumps(record, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
