"""bench.clean: a tiny run (8 chapters at 1x and 2x, one run each) writes a complete report."""

import json
import sys

from tests.conftest import ROOT, run


def test_tiny_run_writes_the_report(tmp_path):
    out = tmp_path / "clean.json"
    args = ["--base-docs", "8", "--sizes", "1,2", "--repeats", "1", "--out", str(out)]
    run([sys.executable, "-m", "bench.clean", *args], cwd=ROOT)
    report = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.json"]
    assert report["command"] == "python -m bench.clean " + " ".join(args)
    assert report["base"]["documents"] == 8
    one, two = report["sizes"]["1x"], report["sizes"]["2x"]
    assert (one["documents"], two["documents"]) == (8, 16) and 0 < one["mb"] < two["mb"]
    for row in (one, two):
        assert row["seconds"] > 0 and row["peak_memory_mb"] > 50
        assert abs(row["mb_per_s"] - row["mb"] / row["seconds"]) < 0.01
    assert report["time_ratio_2x"] == round(two["seconds"] / one["seconds"], 3)
    assert report["datatrove"]["size"] == "1x" and report["datatrove"]["seconds"] > 0
    expected = round(one["seconds"] / report["datatrove"]["seconds"] - 1, 4)
    assert abs(report["overhead_vs_datatrove"] - expected) < 1e-3
    assert report["overhead_target"] == 0.1
    assert one["datatrove_seconds"] < one["seconds"] and report["overhead_in_process"] > 0
    parent = report["parent_peak_memory_mb"]  # the corpus never enters it (under pytest it starts at pytest's peak)
    assert 0 < parent["start"] <= parent["end"] < parent["start"] + 30
    assert all(0 < row[k] < row["peak_memory_mb"] for row in (one, two) for k in ("peak_anon_mb", "peak_file_mb"))


def test_build_streams_the_same_corpus_replicate_makes(tmp_path):
    """The Nx input is built one document at a time (in a child process in the bench): the same rows as replicate."""
    from datasets import load_from_disk

    from bench.clean import base_corpus, build, replicate

    info = build(5, 3, tmp_path / "in")
    rows = [{"id": r["id"], "text": r["text"]} for r in load_from_disk(str(tmp_path / "in"))]
    expected = replicate(base_corpus(5), 3)
    assert rows == expected and info["documents"] == 15
    assert info["mb"] == round(sum(len(d["text"].encode()) for d in expected) / 1e6, 3)
