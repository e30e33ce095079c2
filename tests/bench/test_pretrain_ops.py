"""bench.pretrain_ops: `--quick` runs as a module and writes a complete, self-consistent report where --out says."""

import json
import platform
import sys

import pytest

from tests.conftest import ROOT, run


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench" / "pretrain_ops.json"
    proc = run([sys.executable, "-m", "bench.pretrain_ops", "--quick", "--out", str(out)], cwd=ROOT)
    r = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["pretrain_ops.json"]  # no temp file left behind

    assert r["quick"] is True and r["config"] == {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 32,
                                                  "batch_size": 4}  # fmt: skip
    s = r["step_seconds"]
    assert set(s) == set(r["step_page_faults"]) == {"default", "reuse"} and min(s.values()) > 0
    assert r["step_speedup_reusing_memory"] == pytest.approx(s["default"] / s["reuse"], rel=0.02)
    assert r["reuse_took_effect"] is (platform.libc_ver()[0] == "glibc")
    g = r["gelu_seconds"]
    assert r["gelu_tanh_over_erf"] == pytest.approx(sum(g["tanh"].values()) / sum(g["erf"].values()), rel=0.05)
    a = r["attention_seconds"]
    assert r["attention_bmm_over_sdpa"] == pytest.approx(a["bmm"] / a["sdpa"], rel=0.02)
    assert 0 <= r["attention_max_abs_diff"] <= 1e-5  # the two attentions compute the same thing
    assert r["command"] == f"python -m bench.pretrain_ops --quick --out {out}"
    assert "page faults" in proc.stdout and str(out) in proc.stdout
