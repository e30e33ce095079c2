"""Accuracy: the share of predictions equal to the reference, as an `evaluate` module kept in the repo.

evaluate.load("metric_modules/accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
-> {"accuracy": 0.6666666666666666}
"""

import datasets
import evaluate

_DESCRIPTION = "Share of predictions equal to the reference label."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("accuracy of an empty set is undefined")
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": correct / len(predictions)}
