"""bench.pretrain: `--quick` runs as a module and writes a complete, self-consistent report where --out says."""

import json
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ROOT, run


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench" / "pretrain.json"
    proc = run([sys.executable, "-m", "bench.pretrain", "--quick", "--out", str(out)], cwd=ROOT)
    r = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["pretrain.json"]  # no temp file left behind

    assert r["quick"] is True and r["steps"] == 3 and r["repeats"] == 1
    assert r["config"] == {"objective": "causal", "n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 32,
                           "vocab_size": 512, "batch_size": 4, "grad_accum": 1}  # fmt: skip
    assert r["tokens_per_run"] == 3 * 4 * 1 * 32
    for key, seconds in (("tokens_per_second", "ours"), ("trainer_tokens_per_second", "trainer")):
        assert r[key] == pytest.approx(r["tokens_per_run"] / min(r["seconds"][seconds]), rel=0.02)
    assert r["speedup_vs_trainer"] == pytest.approx(r["tokens_per_second"] / r["trainer_tokens_per_second"], rel=0.01)
    assert 0 < min(r["seconds"]["trainer_loop"]) <= min(r["seconds"]["trainer"])  # its loop is part of its run
    assert len(r["seconds"]["trainer_loop"]) == len(r["seconds"]["trainer_reusing"]) == 1  # one each per round
    assert r["speedup_vs_trainer_reusing_memory"] == pytest.approx(
        r["tokens_per_run"] / min(r["seconds"]["ours"]) / (r["tokens_per_run"] / min(r["seconds"]["trainer_reusing"])),
        rel=0.02,
    )
    runs = {"ours", "trainer", "trainer_reusing"}  # each in its own process: its faults and peak memory its own
    assert set(r["page_faults_per_step"]) == set(r["peak_rss_mb"]) == runs
    assert all(r["peak_rss_mb"][k] > 100 for k in runs)  # torch and transformers alone take more

    # 6 N + 12 L T d, with N the 2 layers' 12 d^2 weight matrices plus the tied 512 x 64 output layer
    n = 2 * 12 * 64 * 64 + 512 * 64
    assert r["matmul_params"] == n and r["flops_per_token"] == 6 * n + 12 * 2 * 32 * 64
    peak = r["matmul_peak_gflops"] * 1e9
    assert peak == max(r["matmul_gflops_by_n"].values()) * 1e9 > 1e8
    assert len(r["matmul_peak_gflops_each"]) == 2 and r["matmul_peak_gflops"] == max(r["matmul_peak_gflops_each"])
    # mfu is stored to 4 decimals: under load the quick run's tiny MFU (6.7e-4) rounds by more than 1%
    assert r["mfu"] == pytest.approx(r["tokens_per_second"] * r["flops_per_token"] / peak, rel=0.01, abs=5e-5)
    assert r["meets_targets"] == {"speedup_vs_trainer": r["speedup_vs_trainer"] >= 1.2, "mfu": r["mfu"] >= 0.6}
    assert r["command"] == f"python -m bench.pretrain --quick --out {out}"
    assert abs(datetime.fromisoformat(r["date"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert "MFU" in proc.stdout and str(out) in proc.stdout
