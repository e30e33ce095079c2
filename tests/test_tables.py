"""scripts.tables: README's result tables are what the committed metrics give, never typed by hand."""

import json

import pytest

from scripts import tables


def test_readme_tables_match_the_committed_metrics(monkeypatch):
    text = tables.README.read_text()
    assert "<!-- table:evaluate -->" in text and "<!-- table:evaluate-claims -->" in text
    assert tables.render(text) == text, "README.md is stale: run `python -m scripts.tables`"


def test_a_block_is_rewritten_from_the_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    run = {
        "init": "pretrained",
        "method": "full",
        "augmented": True,
        "accuracy": 0.5,
        "accuracy_ci95": [0.4, 0.6],
        "macro_f1": 0.45,
        "macro_f1_ci95": [0.35, 0.55],
        "trainable_params": 1000,
        "trainable_share": 1.0,
    }
    claim = {"claim": "X beats Y", "gap": 3.25, "ci95": [0.5, 6.0], "verdict": "holds"}
    unmeasured = {"claim": "BT adds", "verdict": "not measured", "why": "no paraphrases"}
    metrics = {"runs": {"full_bt": run}, "examples": 10, "clusters": 3, "interval": "95%",
               "claims": [claim, unmeasured]}  # fmt: skip
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(metrics))
    text = "intro\n<!-- table:evaluate -->\nstale row\n<!-- /table:evaluate -->\n"
    text += "<!-- table:evaluate-claims -->\n<!-- /table:evaluate-claims -->\n"
    out = tables.render(text)
    assert (
        "| full_bt | pretrained | full + back-translation | 0.500 [0.400, 0.600] | 0.450 [0.350, 0.550] "
        "| 1,000 (100.0%) |" in out
    )
    assert "| BT adds | - | not measured: no paraphrases |" in out
    assert "| X beats Y | +3.2 [+0.5, +6.0] | holds |" in out and "stale row" not in out and out.startswith("intro\n")
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        tables.render("<!-- table:nope -->\n<!-- /table:nope -->")


def test_the_study_tables_give_each_size_and_each_claim_at_its_size():
    cell = {"accuracy": 0.5, "accuracy_ci95": [0.45, 0.55]}
    s = {
        "sizes": [8, 32],
        "draws": {"8": 5, "32": 5},
        "data_efficiency": {"full": {"8": cell}},
        "claims": [{"claim": "X beats Y", "size": 32, "gap": -1.0, "ci95": [-3.0, 1.5], "verdict": "not resolved"}],
    }
    assert tables.study_table(s)[2] == "| full | 0.500 [0.450, 0.550] | - |"
    assert tables.study_table(s)[0] == "| run | 8 per class (5 draws) | 32 per class (5 draws) |"
    assert (
        tables.claims_table(s["claims"], with_size=True)[2] == "| X beats Y | 32 | -1.0 [-3.0, +1.5] | not resolved |"
    )
