"""bench.qlora on a tiny GPT-2: one report holding both methods' bytes, peak memory and step time."""

import json

from bench.qlora import main
from tests.conftest import ROOT
from tests.stages import test_methods

base = test_methods.base  # the tiny GPT-2 (a fixture)


def test_the_report_holds_both_methods_and_their_ratios(base, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # params.yaml's knobs
    out = tmp_path / "qlora.json"
    main(["--pretrained", str(base), "--steps", "1", "--length", "5", "--rounds", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    lora, qlora = report["lora"], report["qlora"]
    assert lora["weight_bytes"]["matrices"] == 4 * 6144  # the tiny body's 8 matrices in fp32
    assert report["matrix_bytes_ratio"] == round(qlora["weight_bytes"]["matrices"] / (4 * 6144), 4) <= 0.30
    assert qlora["weight_bytes"]["other"] == lora["weight_bytes"]["other"]
    assert lora["trainable_params"] == qlora["trainable_params"] and lora["total_params"] == qlora["total_params"]
    assert all(m["peak_rss_mb"] > 0 and m["cpu_seconds_per_step"] > 0 for m in (lora, qlora))
    assert report["cpu_seconds_per_step_ratio"] > 0 and len(report["cpu_seconds_per_step_ratio_by_round"]) == 1
    assert report["body"] == str(base) and report["command"].startswith("python -m bench.qlora --pretrained")
