"""bench.presets: a small run reports every (sample, preset) with its drops; short_text keeps the one-line verses
and no Spanish one; the ablation helpers on literal mappings."""

import json
import sys

from bench.presets import differing_keys, value_at, with_key
from tests.conftest import ROOT, run


def test_the_ablation_helpers_find_and_set_dotted_keys():
    a, b = {"x": {"y": 1, "z": [2]}, "w": True}, {"x": {"y": 1, "z": [3]}, "w": False}
    assert differing_keys(a, b) == ["x.z", "w"]
    assert with_key(a, "x.z", [3]) == {"x": {"y": 1, "z": [3]}, "w": True} and a["x"]["z"] == [2]  # a copy
    assert value_at(b, "x.z") == [3]


def test_small_run_reports_each_sample_and_preset_with_its_drops(tmp_path):
    out = tmp_path / "presets.json"
    args = ["--short", "60", "--spanish", "20", "--chapters", "4", "--presets", "short_text", "chapters"]
    run([sys.executable, "-m", "bench.presets", *args, "--no-ablations", "--out", str(out)], cwd=ROOT)
    report = json.loads(out.read_text())
    assert report["samples"] == {"short_text": 60, "short_text_spanish": 20, "chapters": 4}
    for sample, presets in report["results"].items():
        assert set(presets) == {"short_text", "chapters"}, sample
        for r in presets.values():
            assert r["documents_in"] - r["documents_kept"] == sum(r["drops"].values())
    short = report["results"]["short_text"]
    assert short["short_text"]["kept_share"] >= 0.9 > short["chapters"]["kept_share"]
    assert short["chapters"]["drops"]["too_few_sentences"] > 0  # chapters' c4.min_num_sentences: 2
    assert report["results"]["short_text_spanish"]["short_text"]["drops"] == {"not_english": 20}
    assert report["ablations"] is None
