"""scoring: point estimates equal the metric modules', and intervals resample chapters, pair gaps and draws."""

import evaluate
import numpy as np
import pytest

from specialist.scoring import Bootstrap, accuracy, interval, macro_f1
from stages.evaluate import METRIC_MODULES


def clustered(n_chapters: int, per: int, seed: int = 0):
    """Chapters whose verses are all right or all wrong (predictions of a run that knows some books only)."""
    rng = np.random.default_rng(seed)
    clusters = [c for c in range(n_chapters) for _ in range(per)]
    ref = np.array([c % 3 for c in clusters])
    good = rng.random(n_chapters) < 0.5
    pred = np.array([r if good[c] else (r + 1) % 3 for c, r in zip(clusters, ref, strict=True)])
    return clusters, pred, ref


def test_point_estimates_equal_the_metric_modules():
    rng = np.random.default_rng(1)
    pred, ref = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    pred[pred == 3] = 0  # class 3 never predicted: F1 0, as the module
    acc = evaluate.load(str(METRIC_MODULES / "accuracy")).compute(predictions=pred, references=ref)["accuracy"]
    f1 = evaluate.load(str(METRIC_MODULES / "macro_f1")).compute(predictions=pred, references=ref, labels=range(4))
    assert accuracy(pred, ref) == pytest.approx(acc)
    assert macro_f1(pred, ref, 4) == pytest.approx(f1["macro_f1"])
    s = Bootstrap(list(range(200)), replicates=500).summary([pred], ref, 4)
    assert s["accuracy"] == round(acc, 4) and s["macro_f1"] == round(f1["macro_f1"], 4)
    assert s["accuracy_ci95"][0] < s["accuracy"] < s["accuracy_ci95"][1]
    assert s["macro_f1_ci95"][0] < s["macro_f1"] < s["macro_f1_ci95"][1]


def test_resampling_chapters_widens_the_interval_of_clustered_errors():
    clusters, pred, ref = clustered(40, 25)
    by_chapter = Bootstrap(clusters, replicates=2000).summary([pred], ref, 3)["accuracy_ci95"]
    by_verse = Bootstrap(list(range(len(ref))), replicates=2000).summary([pred], ref, 3)["accuracy_ci95"]
    width = by_chapter[1] - by_chapter[0]
    assert width > 3 * (by_verse[1] - by_verse[0])  # 25 verses of a chapter carry one chapter's information
    assert width == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(40), rel=0.2)  # ~ a proportion over 40 chapters


def test_a_replicate_keeps_whole_chapters():
    # two chapters: one all right (3 verses), one all wrong (1 verse); a replicate has chapter 0 k times of 2
    b = Bootstrap(["a", "a", "a", "b"], replicates=300, seed=3)
    reps = b.accuracy([[1, 1, 1, 0]], [1, 1, 1, 1])
    assert set(np.round(reps, 6)) <= {0.0, 0.75, 1.0}  # both b, one of each (3 of 4 right), both a


def test_a_gap_is_paired_on_the_same_chapters():
    clusters, pred, ref = clustered(40, 25)
    b = Bootstrap(clusters, replicates=1000)
    assert b.gap([pred], [pred], ref) == {"gap": 0.0, "ci95": [0.0, 0.0]}
    better = pred.copy()
    better[:25] = ref[:25]  # one more chapter right
    gap = b.gap([better], [pred], ref)
    assert gap["gap"] == pytest.approx(100 * (accuracy(better, ref) - accuracy(pred, ref)), abs=0.01)
    assert 0 <= gap["ci95"][0] <= gap["gap"] <= gap["ci95"][1] < 10  # paired: far narrower than either accuracy's


def test_draws_are_resampled_and_paired_between_runs():
    clusters, pred, ref = clustered(30, 10)
    b = Bootstrap(clusters, replicates=500)
    assert np.allclose(b.accuracy([pred, pred, pred], ref), b.accuracy([pred], ref))  # equal draws: as one
    other = np.where(np.arange(len(ref)) % 2 == 0, ref, pred)
    mixed = b.summary([pred, other], ref, 3)
    assert mixed["accuracy"] == round((accuracy(pred, ref) + accuracy(other, ref)) / 2, 4)
    assert (b.draws(5) == b.draws(5)).all() and b.draws(5).shape == (500, 5)  # the same draws for every run
    with pytest.raises(ValueError, match="same draws"):
        b.gap([pred, other], [pred], ref)


def test_interval_is_the_central_95_percent_in_points():
    assert interval(np.linspace(0, 1, 4001)) == [2.5, 97.5]
