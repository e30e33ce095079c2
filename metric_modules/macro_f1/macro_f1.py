"""Macro-F1 and per-class F1, as an `evaluate` module kept in the repo.

F1 per class c is 2·TP/(2·TP + FP + FN); macro-F1 is their unweighted mean over `labels` (default: every
label seen in predictions or references), so rare classes count as much as common ones.

evaluate.load("metric_modules/macro_f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
-> {"macro_f1": 0.6666666666666666, "per_class_f1": {"0": 0.6666666666666666, "1": 0.6666666666666666}}
"""

import datasets
import evaluate

_DESCRIPTION = "Unweighted mean of the per-class F1 scores, and the per-class scores."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    labels (list of int, optional): the label set to average over; a label never predicted nor present scores 0.
Returns:
    macro_f1 (float), per_class_f1 (dict label -> float).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None):
        labels = sorted(set(predictions) | set(references)) if labels is None else list(labels)
        per_class = {}
        for c in labels:
            tp = sum(1 for p, r in zip(predictions, references, strict=True) if p == c and r == c)
            fp = sum(1 for p, r in zip(predictions, references, strict=True) if p == c and r != c)
            fn = sum(1 for p, r in zip(predictions, references, strict=True) if p != c and r == c)
            per_class[str(c)] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        return {"macro_f1": sum(per_class.values()) / max(1, len(per_class)), "per_class_f1": per_class}
