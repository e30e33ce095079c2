"""bench.clean_memory: a tiny run (8 chapters at 1x and 2x) reports every pipeline of the stage at each size."""

import json
import sys

from stages.clean import CleanParams, pipelines
from stages.presets import load_params
from tests.conftest import ROOT, run


def test_tiny_run_reports_each_pipeline_at_each_size(tmp_path):
    out = tmp_path / "clean_memory.json"
    args = ["--base-docs", "8", "--sizes", "1,2", "--out", str(out)]
    run([sys.executable, "-m", "bench.clean_memory", *args], cwd=ROOT)
    report = json.loads(out.read_text())
    assert report["command"] == "python -m bench.clean_memory " + " ".join(args)
    names = [
        name for name, _, _ in pipelines(load_params("clean", CleanParams, ROOT / "params.yaml"), tmp_path, tmp_path)
    ]
    for size, docs in (("1x", 8), ("2x", 16)):
        row = report["sizes"][size]
        assert row["documents"] == docs and list(row["pipelines"]) == names
        assert all(r["peak_memory_mb"] > 50 and r["seconds"] > 0 for r in row["pipelines"].values())
        assert all(0 < r["peak_anon_mb"] < r["peak_memory_mb"] for r in row["pipelines"].values())
    one, two = report["sizes"]["1x"]["pipelines"], report["sizes"]["2x"]["pipelines"]
    growth = report["peak_memory_growth_2x"]
    assert set(growth) == set(names)
    assert all(abs(growth[k] - two[k]["peak_memory_mb"] / one[k]["peak_memory_mb"]) < 1e-3 for k in names)
