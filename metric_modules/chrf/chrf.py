"""chrF (character n-gram F-score) from sacrebleu (0-100), as an `evaluate` module kept in the repo.

word_order=0 is chrF, word_order=2 is chrF++. With sentence_scores=True the result also holds each prediction's
own chrF (sacrebleu.sentence_chrf), e.g. to filter pairs by similarity in one call.

evaluate.load("metric_modules/chrf").compute(
    predictions=["the cat sat on the mat"], references=["the cat is on the mat"])
-> {"chrf": 64.57...}
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level chrF computed by sacrebleu.corpus_chrf; optionally each sentence's chrF too."
_KWARGS = """
Args:
    predictions (list of str): system outputs.
    references (list of str, or list of list of str): one or several references per prediction.
    char_order (int): character n-gram order. Default 6.
    word_order (int): word n-gram order; 2 gives chrF++. Default 0.
    beta (int): recall weighs beta times as much as precision. Default 2.
    sentence_scores (bool): also return `sentence_chrf`, one score per prediction. Default False.
Returns:
    chrf (float, 0-100), and sentence_chrf (list of float) when asked.
"""


def as_reference_streams(references) -> list[list[str]]:
    """sacrebleu's layout, one stream per reference: [["a1", "a2"], ["b1", "b2"]] -> [["a1", "b1"], ["a2", "b2"]]."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len({len(r) for r in refs}) > 1:
        raise ValueError("every prediction needs the same number of references")
    return [list(stream) for stream in zip(*refs, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, sentence_scores=False):
        if len(predictions) == 0:
            raise ValueError("chrF of an empty corpus is undefined")
        streams = as_reference_streams(references)
        kw = {"char_order": char_order, "word_order": word_order, "beta": beta}
        out = {"chrf": sacrebleu.corpus_chrf(predictions, streams, **kw).score}
        if sentence_scores:
            out["sentence_chrf"] = [
                sacrebleu.sentence_chrf(p, [s[i] for s in streams], **kw).score for i, p in enumerate(predictions)
            ]
        return out
