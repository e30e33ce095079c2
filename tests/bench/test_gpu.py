"""scripts/gpu_check.sh --cpu: the GPU check's code path runs on the CPU (so it cannot rot before a GPU is lent)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_dry_runs_on_the_cpu_with_loss_parity(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert report["device"] == "cpu" and report["gpu"] is None and report["steps"] == 4
    fp32, bf16 = report["runs"]["fp32"], report["runs"]["bf16"]
    assert fp32["pretrain_losses"] == report["cpu_reference"]["pretrain_losses"]  # the same loop, bitwise on a CPU
    assert fp32["pretrain_max_rel_diff"] == 0 and fp32["parity"] and bf16["parity"]
    assert 0 < bf16["pretrain_max_rel_diff"] <= bf16["tolerance"]  # autocast ran: bf16 moved the losses a little
    assert len(fp32["finetune_losses"]) == 2 and fp32["tokens_per_second"] > 0
