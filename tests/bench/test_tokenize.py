"""bench.tokenize: `--quick` runs as a module and writes a complete report where --out says."""

import importlib.metadata as md
import json
import os
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ROOT, run


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench" / "tokenize.json"
    proc = run([sys.executable, "-m", "bench.tokenize", "--quick", "--out", str(out)], cwd=ROOT)
    report = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["tokenize.json"]  # no temp file left behind

    paths = ("stage", "call", "raw")
    assert report["quick"] is True and report["repeats"] == 2
    for name in paths:
        assert len(report["seconds"][name]) == 2
        assert report["best_seconds"][name] == min(report["seconds"][name]) > 0
        assert report["mb_per_s"][name] > 0
        # MB/s = MB / best seconds (both rounded in the report)
        assert report["mb_per_s"][name] == pytest.approx(report["text"]["mb"] / report["best_seconds"][name], rel=0.03)
    ratio = report["mb_per_s"]["stage"] / report["mb_per_s"]["raw"]
    assert abs(report["ratio"] - ratio) < 0.002
    assert report["target"] == 0.8 and report["meets_target"] == (report["ratio"] >= 0.8)

    assert report["text"]["documents"] == 20 and report["text"]["chars"] > 10_000
    assert report["text"]["source"].startswith(("data/2_clean/corpus", "data/raw"))
    assert report["tokens"] > 1000 and report["tokenizer"]["vocab_size"] > 259

    host = report["machine"]
    assert host["cpu_count"] == os.cpu_count() and host["cpus_usable"] >= 1
    assert host["versions"] == {p: md.version(p) for p in ("torch", "tokenizers", "transformers", "datasets")}
    assert host["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["command"] == f"python -m bench.tokenize --quick --out {out}"
    assert abs(datetime.fromisoformat(report["date"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert "stage / raw" in proc.stdout and str(out) in proc.stdout
