"""Accuracy and macro-F1 with 95% intervals that respect clustered test data (a chapter bootstrap).

The verses of one chapter are not independent examples, so an interval that resamples verses is too narrow. Each
bootstrap replicate resamples the test *clusters* (chapters) with replacement and keeps all their verses; a gap
between two runs scored on the same verses uses the same replicates for both (paired). Where a run has several
labeled draws (the study), a replicate also resamples the draws, so the interval covers both the test set and the
choice of labels. Intervals are percentile intervals in points; replicates come from a seeded generator.

    b = Bootstrap(clusters=[("Gen", 1), ("Gen", 1), ("Rev", 3)])
    b.summary([[0, 1, 2]], [0, 1, 1], n_classes=3) -> {"accuracy": 0.6667, "accuracy_ci95": [0.0, 1.0], ...}
    b.gap(a, b, references) -> {"gap": 4.7 (points), "ci95": [0.3, 9.1]}
"""

from dataclasses import dataclass, field

import numpy as np

LEVEL = 95  # percent; the intervals everywhere in the project


@dataclass
class Bootstrap:
    """Replicates of a test set's clusters: `weights[b, c]` is how often replicate b drew cluster c."""

    clusters: list  # the cluster of each example (a chapter key), in the examples' order
    replicates: int = 2000
    seed: int = 0
    ids: np.ndarray = field(init=False)  # (N,) cluster index of each example
    weights: np.ndarray = field(init=False)  # (B, C)

    def __post_init__(self):
        keys = {k: i for i, k in enumerate(dict.fromkeys(map(_hashable, self.clusters)))}
        self.ids = np.array([keys[_hashable(k)] for k in self.clusters], dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        n = len(keys)
        self.weights = rng.multinomial(n, np.full(n, 1 / n), size=self.replicates).astype(np.float64)

    def draws(self, d: int) -> np.ndarray:
        """(B, d) indices of the labeled draws each replicate averages over; the same for every run with d draws,
        so gaps between runs of the same draws stay paired. One draw: all zeros."""
        if d == 1:
            return np.zeros((self.replicates, 1), dtype=np.int64)
        return np.random.default_rng([self.seed, d]).integers(0, d, size=(self.replicates, d))

    def accuracy(self, predictions, references) -> np.ndarray:
        """(B,) accuracy of each replicate, averaged over the resampled draws; predictions is (D, N)."""
        pred, ref = _arrays(predictions, references)
        n_c = np.bincount(self.ids, minlength=self.weights.shape[1])  # (C,) examples per cluster
        right = np.stack([np.bincount(self.ids, weights=(p == ref), minlength=len(n_c)) for p in pred])  # (D, C)
        per_draw = (self.weights @ right.T) / (self.weights @ n_c)[:, None]  # (B, D)
        return _over_draws(per_draw, self.draws(len(pred)))

    def macro_f1(self, predictions, references, n_classes: int) -> np.ndarray:
        """(B,) macro-F1 over `n_classes` of each replicate (a class with no TP, FP or FN scores 0, as the
        macro_f1 metric module), averaged over the resampled draws."""
        pred, ref = _arrays(predictions, references)
        c = self.weights.shape[1]
        counts = np.zeros((3, len(pred), c, n_classes))  # TP, FP, FN per draw, cluster, class
        for d, p in enumerate(pred):
            for k in range(n_classes):
                counts[0, d, :, k] = np.bincount(self.ids, weights=(p == k) & (ref == k), minlength=c)
                counts[1, d, :, k] = np.bincount(self.ids, weights=(p == k) & (ref != k), minlength=c)
                counts[2, d, :, k] = np.bincount(self.ids, weights=(p != k) & (ref == k), minlength=c)
        tp, fp, fn = np.einsum("bc,xdck->xbdk", self.weights, counts)  # each (B, D, K)
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return _over_draws(f1.mean(axis=2), self.draws(len(pred)))

    def summary(self, predictions, references, n_classes: int) -> dict:
        """Accuracy and macro-F1 (shares, the mean over draws) with their 95% intervals:
        {"accuracy": 0.372, "accuracy_ci95": [0.325, 0.418], "macro_f1": ..., "macro_f1_ci95": [...]}."""
        pred, ref = _arrays(predictions, references)
        acc = np.mean([accuracy(p, ref) for p in pred])
        f1 = np.mean([macro_f1(p, ref, n_classes) for p in pred])
        return {
            "accuracy": round(float(acc), 4), "accuracy_ci95": interval(self.accuracy(pred, ref), 1, 4),
            "macro_f1": round(float(f1), 4), "macro_f1_ci95": interval(self.macro_f1(pred, ref, n_classes), 1, 4),
        }  # fmt: skip

    def gap(self, a, b, references) -> dict:
        """Accuracy of run a minus run b in points, paired on the same verses (and draws): mean and 95% interval.
        a and b are (D, N) predictions of the same D draws."""
        pa, ref = _arrays(a, references)
        pb, _ = _arrays(b, references)
        if len(pa) != len(pb):
            raise ValueError(f"a paired gap needs the same draws: {len(pa)} vs {len(pb)}")
        point = np.mean([accuracy(x, ref) - accuracy(y, ref) for x, y in zip(pa, pb, strict=True)])
        return {"gap": round(float(point) * 100, 2), "ci95": interval(self.accuracy(pa, ref) - self.accuracy(pb, ref))}


def accuracy(prediction, reference) -> float:
    """Share of equal labels: [0, 1, 1], [0, 1, 0] -> 0.667."""
    return float(np.mean(np.asarray(prediction) == np.asarray(reference)))


def macro_f1(prediction, reference, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over range(n_classes) (0 for a class never predicted nor present)."""
    p, r = np.asarray(prediction), np.asarray(reference)
    scores = []
    for k in range(n_classes):
        tp, fp, fn = np.sum((p == k) & (r == k)), np.sum((p == k) & (r != k)), np.sum((p != k) & (r == k))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def interval(replicates: np.ndarray, scale: float = 100, digits: int = 2) -> list[float]:
    """The LEVEL% percentile interval of the replicates, times `scale` (100: points), rounded."""
    lo, hi = np.percentile(replicates, [(100 - LEVEL) / 2, (100 + LEVEL) / 2])
    return [round(float(lo) * scale, digits), round(float(hi) * scale, digits)]


def _over_draws(per_draw: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(B, D) values and (B, D) resampled draw indices -> (B,) the mean over each replicate's draws."""
    return np.take_along_axis(per_draw, idx, axis=1).mean(axis=1)


def _arrays(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    pred = np.atleast_2d(np.asarray(predictions, dtype=np.int64))  # (D, N)
    ref = np.asarray(references, dtype=np.int64)
    if pred.shape[1] != len(ref):
        raise ValueError(f"{pred.shape[1]} predictions for {len(ref)} references")
    return pred, ref


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key
