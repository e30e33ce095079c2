"""bench.pretrain_quality: `--quick` writes a self-consistent report; the time to a perplexity is read off a curve."""

import json
import math
import sys

import pytest

from bench.pretrain_quality import QUICK_STEPS, seconds_to
from tests.conftest import ROOT, run


def test_seconds_to_interpolates_between_validations():
    curve = [{"seconds": 10, "val_loss": 5.0}, {"seconds": 20, "val_loss": 4.0}, {"seconds": 30, "val_loss": 3.0}]
    assert seconds_to(curve, 4.5) == 15.0
    assert seconds_to(curve, 4.0) == 20.0
    assert seconds_to(curve, 6.0) == 10.0  # already there at the first validation
    assert seconds_to(curve, 2.0) is None  # never reached


@pytest.mark.parametrize("together", [False, True])
def test_quick_run_writes_the_report(tmp_path, together):
    out = tmp_path / "quality.json"
    cmd = [sys.executable, "-m", "bench.pretrain_quality", "--quick", "--threads", "1", "--eval-every", "4"]
    cmd += ["--out", str(out)]
    proc = run(cmd + (["--together"] if together else []), cwd=ROOT)
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["mode"] == ("together" if together else "one after the other")
    trainer, ours = r["trainer"], r["ours"]
    assert trainer["recipe"]["optimizer"] == "adamw" and trainer["recipe"]["lr"] == 1e-3
    assert trainer["recipe"]["schedule"] == "cosine" and trainer["recipe"]["warmup_steps"] == 2  # quick
    assert [row["step"] for row in trainer["curve"]][-1] == QUICK_STEPS
    assert r["target_perplexity"] == trainer["final_perplexity"] == trainer["curve"][-1]["val_perplexity"]
    assert r["seconds_to_target"]["trainer"] <= trainer["seconds"]  # reached at its end, or earlier
    for summary in (trainer, ours):
        steps = [row["step"] for row in summary["curve"]]
        seconds = [row["seconds"] for row in summary["curve"]]
        assert steps == sorted(steps) and seconds == sorted(seconds) and seconds[0] > 0
        assert all(row["tokens"] == row["step"] * 4 * 32 for row in summary["curve"])  # quick: 4 blocks of 32
        assert all(
            row["val_perplexity"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-3) for row in summary["curve"]
        )
    reached = r["seconds_to_target"]["ours"]
    if reached is None:  # ours ran to its last step without reaching Trainer's perplexity
        assert ours["curve"][-1]["step"] == QUICK_STEPS and r["ratio"] is None and not r["meets_target"]
    else:  # it stops at its first validation at or under the target
        assert ours["curve"][-1]["val_perplexity"] <= r["target_perplexity"] + 0.01
        if not together:  # Trainer's loss was known from ours' start (together: from Trainer's end)
            assert all(row["val_perplexity"] > r["target_perplexity"] for row in ours["curve"][:-1])
        # from the seconds as stored (to 0.01 s: quick runs last about a second)
        assert r["ratio"] == pytest.approx(reached / r["seconds_to_target"]["trainer"], rel=0.05)
        assert r["meets_target"] == (r["ratio"] <= 0.5)
    assert r["command"].startswith("python -m bench.pretrain_quality --quick")
    assert "ratio" in proc.stdout and str(out) in proc.stdout
