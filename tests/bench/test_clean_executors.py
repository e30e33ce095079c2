"""bench.clean_executors: its comparisons on literal folders and metrics, and a tiny local-only run's report (Ray
and Slurm really run in tests/stages/test_clean_executors.py)."""

import json
import sys
from pathlib import Path

from datasets import Dataset

from bench.clean_executors import differing_files, params_for, versus_local, without_measurements
from tests.conftest import ROOT, run
from tests.stages.test_clean import dedup_docs


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_differing_files_names_changed_and_missing_files_but_not_meta_json(tmp_path):
    a = write(tmp_path / "a", {"x": b"1", "corpus/y": b"2", "meta.json": b'{"executor": "local"}'})
    b = write(tmp_path / "b", {"x": b"1", "corpus/y": b"3", "z": b"", "meta.json": b'{"executor": "ray"}'})
    assert differing_files(a, b) == ["corpus/y", "z"]
    assert differing_files(a, a) == []


def test_without_measurements_drops_seconds_at_any_depth():
    metrics = {"documents_out": 3, "seconds": 2.1, "datatrove": {"seconds": 1.9}, "drops": {"empty": 1}}
    assert without_measurements(metrics) == {"documents_out": 3, "datatrove": {}, "drops": {"empty": 1}}


def test_versus_local_needs_the_same_files_and_the_same_metrics():
    local = {"seconds": 10.0, "metrics": {"documents_out": 3, "seconds": 10.0}}
    ray = {"seconds": 15.0, "metrics": {"documents_out": 3, "seconds": 15.0}}
    assert versus_local(ray, local, []) == {
        "vs_local": 1.5, "identical_to_local": True, "differing_files": [], "metrics_equal_to_local": True
    }  # fmt: skip
    assert versus_local(ray, local, ["corpus/data-00000-of-00001.arrow"])["identical_to_local"] is False
    fewer = {"seconds": 5.0, "metrics": {"documents_out": 2, "seconds": 5.0}}
    assert versus_local(fewer, local, [])["identical_to_local"] is False


def test_params_for_takes_params_yaml_with_the_bench_settings():
    p = params_for("slurm", tasks=3, workers=2)
    assert (p.executor, p.tasks, p.workers, p.slurm.partition) == ("slurm", 3, 2, "cpu")  # the local cluster's
    venv = Path(sys.executable).parent / "activate"
    assert p.slurm.venv_path == (str(venv) if venv.exists() else None)


def test_tiny_local_run_writes_the_report(tmp_path):
    Dataset.from_list(dedup_docs()[:3]).save_to_disk(tmp_path / "in")  # Genesis 1, a copy, an edited copy
    out = tmp_path / "report.json"
    args = ["--src", str(tmp_path / "in"), "--executors", "local", "--tasks", "1", "--workers", "1", "--out", str(out)]
    run([sys.executable, "-m", "bench.clean_executors", *args], cwd=ROOT)
    report = json.loads(out.read_text())
    assert report["command"] == "python -m bench.clean_executors " + " ".join(args)
    assert report["corpus"]["documents"] == 3 and report["corpus"]["documents_kept"] == 1
    assert (report["tasks"], report["workers"], list(report["executors"])) == (1, 1, ["local"])
    local = report["executors"]["local"]
    assert 0 < local["datatrove_seconds"] < local["seconds"] < local["process_seconds"]
    assert report["machine"]["host"] == "not stated"
