#!/usr/bin/env bash
# The GPU check, one prepared script: on a CUDA machine, the training loops in fp32 and bf16 against the CPU (loss
# parity, tokens/s) -> reports/bench/gpu.json. `--cpu`: the same run on the CPU (a dry run: CI keeps it working).
#   bash scripts/gpu_check.sh            # a GPU machine (installs the locked packages first if they are missing)
#   bash scripts/gpu_check.sh --cpu      # anywhere; writes to $OUT or /tmp, not to reports/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import torch, transformers, datasets" 2>/dev/null; then
  # a bare machine: torch's CUDA build, then every other package as requirements.lock pins it
  "$PY" -m pip install -q --extra-index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0"
  "$PY" -m pip install -q --no-deps --require-hashes -r requirements.lock
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "${1:-}" = "--cpu" ]; then
  exec "$PY" -m bench.gpu --cpu --quick --steps 4 --out "${OUT:-/tmp}/gpu-cpu.json"
fi
exec timeout 300 "$PY" -m bench.gpu --steps 30
