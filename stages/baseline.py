"""baseline: a classical bar for the fine-tuning runs, TF-IDF + logistic regression on exactly the same labels.

Reads  data/1_ingest/task (text, label; splits train and validation)
       data/6_augment (back-translated paraphrases, used when the run has `augmented: true`)
Writes models/7_baseline/<run>   model.safetensors (idf, coef, intercept, classes), vocabulary.json (the n-grams,
                                 in column order), baseline.json (vectorizer settings, chosen C, labels),
                                 top_features.json (the heaviest n-grams per genre), meta.json (the validation
                                 search, trainable parameters); no pickle anywhere
       metrics/baseline/<run>.json   the chosen hyperparameters, counts, train seconds and peak memory

    python -m stages.baseline tfidf       # the run name is a key of baseline.runs

Word n-gram TF-IDF (sublinear tf) and multinomial logistic regression (lbfgs: deterministic, so no seed), from
scikit-learn. Every (C, n-gram range) of the grid in `baseline.train` is fit on the train split (plus the
paraphrases for an augmented run, as finetune does) and scored on validation; the most accurate is kept, the first
in grid order on a tie. The test split is never read here: `evaluate` scores the saved model on it, beside the
fine-tuning runs. A labeled-set size knob (data efficiency) would be a field of the run, applied in
`training_set` by drawing from the task's pool split.
"""

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.common import ParamsError, atomic_dir, fail, load_params, meta, write_json

TASK = Path("data/1_ingest/task")
AUGMENT = Path("data/6_augment")
OUT = Path("models/7_baseline")
METRICS = Path("metrics/baseline")
TOP_FEATURES = 15  # per genre, in top_features.json


@dataclass(frozen=True)
class BaselineParams:  # baseline.train: shared by every run
    C: list[float]  # inverse L2 strengths searched on validation
    ngram_ranges: list[list[int]]  # word n-gram ranges searched, each [min_n, max_n]
    sublinear_tf: bool  # tf -> 1 + log(tf)
    max_iter: int  # lbfgs iterations

    def validate(self):
        if not self.C or any(c <= 0 for c in self.C):
            yield f"C: expected a non-empty list of values > 0, got {self.C}"
        if not self.ngram_ranges:
            yield "ngram_ranges: expected a non-empty list of [min_n, max_n]"
        for i, r in enumerate(self.ngram_ranges):
            if len(r) != 2 or not 1 <= r[0] <= r[1]:
                yield f"ngram_ranges[{i}]: expected [min_n, max_n] with 1 <= min_n <= max_n, got {r}"
        if self.max_iter < 1:
            yield f"max_iter: must be >= 1, got {self.max_iter}"


@dataclass(frozen=True)
class BaselineRunParams:  # baseline.runs.<run>
    augmented: bool  # add the back-translated paraphrases (data/6_augment) to the training set


def training_set(train, augment, augmented: bool) -> tuple[list[str], list[int]]:
    """(texts, labels) of the labeled train split, plus the paraphrases when `augmented` (as finetune's set).

    `train` and `augment` are column mappings (a Dataset or a dict); `augment` may be None when not augmented.

    {"text": ["a"], "label": [0]}, {"text": ["b"], "label": [0]}, True -> (["a", "b"], [0, 0])
    """
    texts, labels = list(train["text"]), list(train["label"])
    if augmented and augment is not None:
        texts += list(augment["text"])
        labels += list(augment["label"])
    return texts, labels


def build(C: float, ngram_range: tuple[int, int], p: BaselineParams):
    """An unfitted TF-IDF + logistic regression pipeline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=tuple(ngram_range), sublinear_tf=p.sublinear_tf),
        LogisticRegression(C=C, max_iter=p.max_iter, solver="lbfgs"),
    )


def accuracy(predictions, references) -> float:
    return sum(int(a == b) for a, b in zip(predictions, references, strict=True)) / len(references)


def search(train: tuple[list, list], val: tuple[list, list], p: BaselineParams):
    """Fit every grid point on `train`, score it on `val`; return (the most accurate pipeline, its row, the table).

    The table lists each point as {"C", "ngram_range", "val_accuracy"}, in grid order (ngram range, then C).
    """
    best, best_row, table = None, None, []
    for ngram_range in p.ngram_ranges:
        for C in p.C:
            pipe = build(C, ngram_range, p).fit(*train)
            acc = accuracy(pipe.predict(val[0]).tolist(), val[1])
            table.append({"C": C, "ngram_range": list(ngram_range), "val_accuracy": acc})
            print(f"C {C:<8g} ngrams {ngram_range}  val acc {acc:.4f}", flush=True)
            if best_row is None or acc > best_row["val_accuracy"]:  # strictly better: the first of equals wins
                best, best_row = pipe, table[-1]
    return best, best_row, table


def count_params(pipe) -> int:
    """Logistic regression coefficients + intercepts (the vectorizer's idf is counted, not learned by gradient)."""
    lr = pipe[-1]
    return int(lr.coef_.size + lr.intercept_.size)


def top_features(pipe, labels: list[str], k: int) -> dict[str, list[str]]:
    """The k n-grams with the largest coefficient for each genre the model has seen, heaviest first."""
    import numpy as np

    vocab = pipe[0].get_feature_names_out()
    lr = pipe[-1]
    coef = lr.coef_ if len(lr.classes_) > 2 else np.vstack([-lr.coef_[0], lr.coef_[0]])  # binary: one row
    order = np.argsort(-coef, axis=1, kind="stable")[:, :k]  # (classes, k) column ids, heaviest first
    return {labels[int(c)]: vocab[cols].tolist() for c, cols in zip(lr.classes_, order, strict=True)}


def save_baseline(pipe, path: Path, labels: list[str]) -> None:
    """Arrays as safetensors, vocabulary and settings as JSON: loadable without pickle (see load_baseline)."""
    import numpy as np
    from safetensors.numpy import save_file

    vec, lr = pipe[0], pipe[-1]
    arrays = {"idf": vec.idf_, "coef": lr.coef_, "intercept": lr.intercept_, "classes": lr.classes_.astype("int64")}
    # lbfgs leaves coef_ in Fortran order; safetensors writes the buffer as laid out, so make it C order first
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / "model.safetensors"))
    write_json(vec.get_feature_names_out().tolist(), path / "vocabulary.json")
    settings = {"ngram_range": list(vec.ngram_range), "sublinear_tf": vec.sublinear_tf, "C": lr.C}
    write_json({**settings, "labels": labels, "num_labels": len(labels)}, path / "baseline.json")


def load_baseline(path: Path):
    """A saved run, ready to predict (`.predict(texts)` -> label ids): the inverse of save_baseline."""
    from safetensors.numpy import load_file
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    info = json.loads((path / "baseline.json").read_text())
    arrays = load_file(str(path / "model.safetensors"))
    vocabulary = json.loads((path / "vocabulary.json").read_text())
    vec = TfidfVectorizer(
        ngram_range=tuple(info["ngram_range"]), sublinear_tf=info["sublinear_tf"], vocabulary=vocabulary
    )
    vec.idf_ = arrays["idf"]
    lr = LogisticRegression(C=info["C"])
    lr.coef_, lr.intercept_, lr.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
    return make_pipeline(vec, lr)


def run(name: str, p: BaselineParams, r: BaselineRunParams, task_dir: Path = TASK, augment_dir: Path = AUGMENT,
        out: Path = OUT, metrics_dir: Path = METRICS) -> dict:  # fmt: skip
    from datasets import load_from_disk

    task = load_from_disk(str(task_dir))
    labels = task["train"].features["label"].names
    augment = load_from_disk(str(augment_dir)) if r.augmented else None
    train_set = training_set(task["train"], augment, r.augmented)
    val_set = (list(task["validation"]["text"]), list(task["validation"]["label"]))

    start = time.perf_counter()
    pipe, best, table = search(train_set, val_set, p)  # the whole search is the training: it picks the model
    seconds = time.perf_counter() - start
    trainable = count_params(pipe)
    info = {
        "run": name, "init": "none", "method": "tfidf_logreg", "augmented": r.augmented,
        "train_examples": len(train_set[0]), "vocabulary_size": len(pipe[0].vocabulary_),
        "trainable_params": trainable, "total_params": trainable, "trainable_share": 1.0,
        "train_seconds": round(seconds, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "chosen": {"C": best["C"], "ngram_range": best["ngram_range"]},
        "best_val_accuracy": best["val_accuracy"], "search": table,
    }  # fmt: skip
    with atomic_dir(out / name) as tmp:
        save_baseline(pipe, tmp, labels)
        write_json(top_features(pipe, labels, TOP_FEATURES), tmp / "top_features.json")
        write_json(meta({"train": asdict(p), "run": asdict(r)}, **info), tmp / "meta.json")
    summary = {k: v for k, v in info.items() if k != "search"}
    write_json(summary, metrics_dir / f"{name}.json")  # with the measurements meta.json leaves out
    return summary


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: python -m stages.baseline <run>   (a key of baseline.runs in params.yaml)")
    name = sys.argv[1]
    p = load_params("baseline.train", BaselineParams)
    try:
        r = load_params(f"baseline.runs.{name}", BaselineRunParams)
    except ParamsError as e:
        fail(f"unknown or invalid baseline run {name!r}: {e}")
    print(json.dumps(run(name, p, r), indent=2))


if __name__ == "__main__":
    main()
