"""Corpus BLEU from sacrebleu (0-100), as an `evaluate` module kept in the repo.

References are one string per prediction, or a list of strings per prediction (several references, the same
number for every prediction, as sacrebleu requires).

evaluate.load("metric_modules/sacrebleu_bleu").compute(
    predictions=["the cat sat on the mat"], references=["the cat is on the mat"])
-> {"bleu": 37.99..., "precisions": [83.3..., 60.0, 25.0, 16.6...], "brevity_penalty": 1.0, "sys_len": 6, "ref_len": 6}
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level BLEU computed by sacrebleu.corpus_bleu (default 13a tokenizer, exp smoothing)."
_KWARGS = """
Args:
    predictions (list of str): system outputs, detokenized.
    references (list of str, or list of list of str): one or several references per prediction.
    lowercase (bool): case-insensitive BLEU. Default False.
    tokenize (str): sacrebleu tokenizer, e.g. "13a", "intl", "none". Default "13a".
Returns:
    bleu (float, 0-100), precisions (1- to 4-gram, 0-100), brevity_penalty, sys_len, ref_len.
"""


def as_reference_streams(references) -> list[list[str]]:
    """sacrebleu's layout, one stream per reference: [["a1", "a2"], ["b1", "b2"]] -> [["a1", "b1"], ["a2", "b2"]]."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len({len(r) for r in refs}) > 1:
        raise ValueError("every prediction needs the same number of references")
    return [list(stream) for stream in zip(*refs, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SacrebleuBleu(evaluate.Metric):
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

    def _compute(self, predictions, references, lowercase=False, tokenize="13a"):
        if len(predictions) == 0:
            raise ValueError("BLEU of an empty corpus is undefined")
        out = sacrebleu.corpus_bleu(
            predictions, as_reference_streams(references), lowercase=lowercase, tokenize=tokenize
        )
        return {
            "bleu": out.score,
            "precisions": list(out.precisions),
            "brevity_penalty": out.bp,
            "sys_len": out.sys_len,
            "ref_len": out.ref_len,
        }
