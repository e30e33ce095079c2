"""claims: the interval of the gap decides, against the claim's threshold; the claims follow the runs present."""

from specialist.claims import FAILS, HOLDS, OPEN, Claim, applicable, line, sign, verdict


def test_at_least_holds_only_where_the_whole_interval_clears_the_threshold():
    c = Claim("full beats scratch by >= 10", "full", "scratch", 10)
    assert verdict(c, [10.5, 14.0]) == HOLDS
    assert verdict(c, [2.0, 7.9]) == FAILS  # clear of 0, but short of 10
    assert verdict(c, [6.0, 12.0]) == OPEN
    beats = Claim("a beats b", "a", "b", 0)
    assert verdict(beats, [0.2, 3.0]) == HOLDS and verdict(beats, [-0.1, 3.0]) == OPEN
    assert verdict(beats, [-3.0, -0.5]) == FAILS


def test_within_holds_only_inside_the_margin():
    c = Claim("lora within 2 of full", "lora", "full", 2, "within")
    assert verdict(c, [-1.9, 1.5]) == HOLDS
    assert verdict(c, [-3.0, 1.0]) == OPEN
    assert verdict(c, [-6.0, -2.5]) == FAILS and verdict(c, [2.1, 4.0]) == FAILS


def test_sign_and_line_say_where_the_interval_lies():
    assert (sign([0.1, 2]), sign([-2, -0.1]), sign([-1, 1])) == ("above 0", "below 0", "includes 0")
    text = line(Claim("X beats Y", "x", "y", 0), {"gap": 4.25, "ci95": [1.0, 7.5]}, " at 8 per class")
    assert (
        text
        == "- X beats Y at 8 per class: **holds** (x - y = +4.2 points, 95% CI [+1.0, +7.5], above 0; needs >= +0)"
    )


def test_the_claims_follow_the_runs_present():
    runs = {
        "scratch": {"init": "scratch", "augmented": False}, "full": {"init": "pretrained", "augmented": False},
        "lora": {"init": "pretrained", "augmented": False}, "full_bt": {"init": "pretrained", "augmented": True},
        "tfidf": {"init": "none", "augmented": False}, "tfidf_bt": {"init": "none", "augmented": True},
    }  # fmt: skip
    pairs = [(c.a, c.b, c.threshold, c.kind) for c in applicable(runs)]
    assert pairs == [
        ("full", "scratch", 10, "at_least"), ("lora", "full", 2, "within"),
        ("full", "tfidf", 0, "at_least"), ("lora", "tfidf", 0, "at_least"), ("full_bt", "tfidf_bt", 0, "at_least"),
        ("full_bt", "full", 2, "at_least"), ("tfidf_bt", "tfidf", 2, "at_least"),
    ]  # fmt: skip
    assert applicable({"full": runs["full"]}) == []
    qlora = applicable({**runs, "qlora": {"init": "pretrained", "augmented": False}})
    assert ("qlora", "lora", 2, "within") in [(c.a, c.b, c.threshold, c.kind) for c in qlora]


def test_the_real_checkpoint_claims_and_the_modern_bars():
    runs = {
        "full": {"init": "pretrained", "augmented": False, "method": "full", "best_val_accuracy": 0.40},
        "lora": {"init": "pretrained", "augmented": False, "method": "lora", "best_val_accuracy": 0.41},
        "minilm": {"init": "checkpoint", "augmented": False, "method": "full"},
        "minilm_dapt": {"init": "checkpoint", "augmented": False, "method": "full"},
        "tfidf": {"init": "none", "augmented": False, "method": "tfidf_logreg"},
        "minilm_probe": {"init": "none", "augmented": False, "method": "probe_logreg"},
        "setfit": {"init": "none", "augmented": False, "method": "setfit_logreg"},
    }  # fmt: skip
    pairs = [(c.a, c.b, c.threshold, c.kind) for c in applicable(runs)]
    assert ("minilm_dapt", "minilm", 0, "at_least") in pairs
    assert ("minilm_dapt", "tfidf", 5, "at_least") in pairs and ("minilm_dapt", "tfidf", 0, "at_least") in pairs
    assert ("minilm_dapt", "minilm_probe", 0, "at_least") in pairs
    # the pipeline's best own run, picked on validation (lora), against each modern bar; no TF-IDF claim against them
    assert ("lora", "minilm_probe", 0, "at_least") in pairs and ("lora", "setfit", 0, "at_least") in pairs
    assert ("full", "minilm_probe", 0, "at_least") not in pairs
    assert not [p for p in pairs if p[1] in ("minilm_probe", "setfit") and p[0] in ("minilm", "scratch")]
    assert not [p for p in pairs if p[0] == "full" and p[1] in ("minilm_probe", "setfit")]
    # without validation accuracies every own run is compared
    bare = {k: {kk: vv for kk, vv in v.items() if kk != "best_val_accuracy"} for k, v in runs.items()}
    assert {(c.a, c.b) for c in applicable(bare) if c.b == "setfit"} == {("full", "setfit"), ("lora", "setfit")}


def test_not_below_is_at_least_zero_decided_by_the_interval():
    runs = {"minilm_dapt": {"init": "checkpoint", "augmented": False},
            "minilm_probe": {"init": "none", "augmented": False, "method": "probe_logreg"}}  # fmt: skip
    (not_below,) = [x for x in applicable(runs) if x.b == "minilm_probe"]
    assert "not below" in not_below.text
    assert verdict(not_below, [0.5, 4.0]) == HOLDS  # shown above
    assert verdict(not_below, [-2.0, 3.0]) == OPEN  # neither shown above nor below
    assert verdict(not_below, [-5.0, -0.5]) == FAILS  # shown below
