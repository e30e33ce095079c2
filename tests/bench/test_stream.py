"""bench.stream: a tiny run (8 chapters at 1x and 2x) takes a user's JSONL corpus through ingest..pretrain."""

import json
import sys

from tests.conftest import ROOT, run


def test_tiny_run_reports_every_stage_at_each_size(tmp_path):
    out = tmp_path / "stream.json"
    args = ["--base-docs", "8", "--sizes", "1,2", "--pretrain-steps", "1", "--out", str(out)]
    run([sys.executable, "-m", "bench.stream", *args], cwd=ROOT)
    report = json.loads(out.read_text())
    assert report["command"] == "python -m bench.stream " + " ".join(args)
    one, two = report["sizes"]["1x"], report["sizes"]["2x"]
    assert (one["documents"], two["documents"]) == (8, 16) and 1.9 < report["mb_growth"] < 2.1
    for row in (one, two):
        assert list(row["stages"]) == ["ingest", "clean", "tokenize", "pretrain"]
        assert all(s["peak_memory_mb"] > 50 and s["seconds"] > 0 for s in row["stages"].values())
        assert all(0 < s["peak_anon_mb"] < s["peak_memory_mb"] for s in row["stages"].values())  # own memory apart
        assert row["stages"]["ingest"]["corpus_documents"] == row["documents"]
    # the copies are edited enough that clean keeps them: every later stage sees twice the text
    assert two["stages"]["clean"]["documents_out"] == 2 * one["stages"]["clean"]["documents_out"]
    assert two["stages"]["tokenize"]["corpus_tokens"] > 1.8 * one["stages"]["tokenize"]["corpus_tokens"]
    growth = report["peak_memory_growth"]
    assert all(abs(growth[k] - two["stages"][k]["peak_memory_mb"] / one["stages"][k]["peak_memory_mb"]) < 1e-3
               for k in growth)  # fmt: skip
    parent = report["parent_peak_memory_mb"]  # the corpus never enters it (under pytest it starts at pytest's peak)
    assert parent["end"] - parent["start"] < 30
