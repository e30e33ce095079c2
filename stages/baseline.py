"""baseline: the bars for the fine-tuning runs, logistic regression on exactly the same labels, over TF-IDF n-grams
(the classical bar) or a sentence encoder's frozen embeddings (the modern few-label bar: a probe, or SetFit).

Reads  data/1_ingest/task (text, label; splits train and validation)
       data/6_augment (back-translated paraphrases, used when the run has `augmented: true`)
       a run's `features:` checkpoint (a sentence encoder: package:<pkg>/<dir>, a local folder or a hub name)
Writes models/7_baseline/<run>   model.safetensors (coef, intercept, classes; TF-IDF's idf), baseline.json (the
                                 features, chosen C, labels); TF-IDF: vocabulary.json (the n-grams, in column
                                 order) and top_features.json (the heaviest n-grams per genre); SetFit: encoder/
                                 (the contrastively fine-tuned body, save_pretrained); meta.json (the validation
                                 search, trainable parameters); no pickle anywhere
       metrics/baseline/<run>.json   the chosen hyperparameters, counts, train seconds and peak memory

    python -m stages.baseline tfidf       # the run name is a key of baseline.runs

Word n-gram TF-IDF (sublinear tf) and multinomial logistic regression (lbfgs: deterministic, so no seed), from
scikit-learn. Every (C, n-gram range) of the grid in `baseline.train` is fit on the train split (plus the
paraphrases for an augmented run, as finetune does) and scored on validation; the most accurate is kept, the first
in grid order on a tie. The test split is never read here: `evaluate` scores the saved model on it, beside the
fine-tuning runs. A labeled-set size knob (data efficiency) would be a field of the run, applied in
`training_set` by drawing from the task's pool split.

`features:` a checkpoint instead of `tfidf`: each verse becomes the encoder's sentence embedding as
sentence-transformers computes it for all-MiniLM-L6-v2 (token states averaged over the attention mask, then
L2-normalised), and only C is searched (`minilm_probe`: the encoder frozen, seconds on a CPU). With a `setfit:`
section the encoder is first fine-tuned contrastively on pairs of the labeled verses (same genre or not) by the
`setfit` package, seeded; then the same embeddings and C search (`setfit`).
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
class SetFitParams:  # baseline.runs.<run>.setfit: the encoder fine-tuned contrastively first (setfit's knobs)
    num_iterations: int  # pairs drawn per labeled verse and epoch (a positive and a negative each): the main cost
    epochs: int
    batch_size: int
    body_lr: float  # the encoder's learning rate (setfit's body_learning_rate)
    seed: int
    max_length: int  # tokens per verse

    def validate(self):
        for name in ("num_iterations", "epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if self.body_lr <= 0:
            yield f"body_lr: must be > 0, got {self.body_lr}"


@dataclass(frozen=True)
class BaselineRunParams:  # baseline.runs.<run>
    augmented: bool  # add the back-translated paraphrases (data/6_augment) to the training set
    features: str = "tfidf"  # tfidf | a sentence encoder (checkpoint spec): its mean-pooled, normalised embeddings
    setfit: SetFitParams | None = None  # features a checkpoint: fine-tune the encoder contrastively first

    def validate(self):
        if self.setfit is not None and self.features == "tfidf":
            yield "setfit: fine-tunes a sentence encoder; set features: to its checkpoint (e.g. package:<pkg>/<dir>)"


def recorded(r: BaselineRunParams) -> dict:
    """r as meta.json records it: a TF-IDF run leaves out the encoder keys, so its artifact stays byte-identical to
    the one written before they existed."""
    params = asdict(r)
    return {k: v for k, v in params.items() if k == "augmented" or r.features != "tfidf"}


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
    """A saved run, ready to predict (`.predict(texts)` -> label ids): the inverse of save_baseline (TF-IDF) or of
    save_probe (an encoder's embeddings)."""
    from safetensors.numpy import load_file
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    info = json.loads((path / "baseline.json").read_text())
    arrays = load_file(str(path / "model.safetensors"))
    if "features" in info:  # an encoder's embeddings; a TF-IDF baseline.json has no such key
        lr = LogisticRegression(C=info["C"])
        lr.coef_, lr.intercept_, lr.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
        encoder = str(path / "encoder") if info["features"] == ENCODER_DIR else info["features"]
        return Probe(encoder, lr, info["max_length"])
    vocabulary = json.loads((path / "vocabulary.json").read_text())
    vec = TfidfVectorizer(
        ngram_range=tuple(info["ngram_range"]), sublinear_tf=info["sublinear_tf"], vocabulary=vocabulary
    )
    vec.idf_ = arrays["idf"]
    lr = LogisticRegression(C=info["C"])
    lr.coef_, lr.intercept_, lr.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
    return make_pipeline(vec, lr)


ENCODER_DIR = "encoder"  # a SetFit run's fine-tuned encoder, inside its folder


def embed(encoder: str, texts: list[str], max_length: int, batch_size: int = 128):
    """(N, H) float32 sentence embeddings of `texts` by the encoder at `encoder` (a checkpoint spec): the token states
    averaged over the attention mask, L2-normalised, as sentence-transformers' Pooling(mean) + Normalize compute them.
    Batches hold texts of similar length (sorted); the rows come back in the texts' order."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from stages.training import from_checkpoint

    tok = from_checkpoint(AutoTokenizer.from_pretrained, encoder, "features", marker=None)
    model = from_checkpoint(AutoModel.from_pretrained, encoder, "features").eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")  # fmt: skip
            h = model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return out


class Probe:
    """A sentence encoder's embeddings + logistic regression; `.predict(texts)` -> label ids, as a TF-IDF pipeline."""

    def __init__(self, encoder: str, lr, max_length: int):
        self.encoder, self.lr, self.max_length = encoder, lr, max_length

    def predict(self, texts: list[str]):
        return self.lr.predict(embed(self.encoder, list(texts), self.max_length))


def search_c(train, val, p: BaselineParams):
    """Logistic regression on features: every C of the grid fit on `train` (X, y), scored on `val`; returns (the most
    accurate, its row, the table), the first of equals winning, as `search`."""
    from sklearn.linear_model import LogisticRegression

    best, best_row, table = None, None, []
    for C in p.C:
        lr = LogisticRegression(C=C, max_iter=p.max_iter, solver="lbfgs").fit(*train)
        acc = accuracy(lr.predict(val[0]).tolist(), val[1])
        table.append({"C": C, "val_accuracy": acc})
        print(f"C {C:<8g} val acc {acc:.4f}", flush=True)
        if best_row is None or acc > best_row["val_accuracy"]:
            best, best_row = lr, table[-1]
    return best, best_row, table


def setfit_encoder(encoder: str, train: tuple[list, list], s: SetFitParams, out: Path) -> str:
    """The encoder fine-tuned contrastively on pairs of `train`'s texts (setfit's Trainer: CosineSimilarityLoss on
    same-label and different-label pairs), saved with save_pretrained (body and tokenizer) to `out`; returns `out`.
    setfit also fits its own head, which is discarded: the caller's C search fits the one kept."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from stages.training import checkpoint_source

    model = SetFitModel.from_pretrained(checkpoint_source(encoder, "features"))
    args = TrainingArguments(batch_size=s.batch_size, num_epochs=s.epochs, num_iterations=s.num_iterations,
                             body_learning_rate=s.body_lr, seed=s.seed, max_length=s.max_length,
                             report_to="none", show_progress_bar=False)  # fmt: skip
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": train[0], "label": train[1]})).train()
    transformer = model.model_body[0]  # sentence-transformers' Transformer module: the HF body and its tokenizer
    transformer.auto_model.save_pretrained(out)
    transformer.tokenizer.save_pretrained(out)
    return str(out)


def fit_encoder(r: BaselineRunParams, train, val, p: BaselineParams, work: Path):
    """(Probe, chosen row, table) of an encoder run: SetFit's fine-tuning into `work` first when r.setfit."""
    max_length = r.setfit.max_length if r.setfit else MAX_LENGTH
    encoder = setfit_encoder(r.features, train, r.setfit, work) if r.setfit else r.features
    train_x, val_x = embed(encoder, train[0], max_length), embed(encoder, val[0], max_length)
    lr, best, table = search_c((train_x, train[1]), (val_x, val[1]), p)
    return Probe(encoder, lr, max_length), best, table


def save_probe(probe: Probe, path: Path, labels: list[str], features: str) -> None:
    """The head as safetensors and its settings as JSON (no pickle); `features` is the encoder's checkpoint spec, or
    ENCODER_DIR for a fine-tuned encoder saved beside it."""
    import numpy as np
    from safetensors.numpy import save_file

    lr = probe.lr
    arrays = {"coef": lr.coef_, "intercept": lr.intercept_, "classes": lr.classes_.astype("int64")}
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / "model.safetensors"))
    info = {"features": features, "pooling": "mean, L2-normalised", "max_length": probe.max_length, "C": lr.C}
    write_json({**info, "labels": labels, "num_labels": len(labels)}, path / "baseline.json")


MAX_LENGTH = 256  # tokens per verse for a frozen encoder (all-MiniLM-L6-v2's max_seq_length); verses have < 130


def run(name: str, p: BaselineParams, r: BaselineRunParams, task_dir: Path = TASK, augment_dir: Path = AUGMENT,
        out: Path = OUT, metrics_dir: Path = METRICS) -> dict:  # fmt: skip
    from datasets import load_from_disk

    task = load_from_disk(str(task_dir))
    labels = task["train"].features["label"].names
    augment = load_from_disk(str(augment_dir)) if r.augmented else None
    train_set = training_set(task["train"], augment, r.augmented)
    val_set = (list(task["validation"]["text"]), list(task["validation"]["label"]))

    start = time.perf_counter()
    with atomic_dir(out / name) as tmp:
        if r.features == "tfidf":  # the whole search is the training: it picks the model
            pipe, best, table = search(train_set, val_set, p)
            seconds, trainable, total = time.perf_counter() - start, count_params(pipe), count_params(pipe)
            kind = {"method": "tfidf_logreg", "vocabulary_size": len(pipe[0].vocabulary_)}
            chosen = {"C": best["C"], "ngram_range": best["ngram_range"]}
            save_baseline(pipe, tmp, labels)
            write_json(top_features(pipe, labels, TOP_FEATURES), tmp / "top_features.json")
        else:  # a probe of the encoder's embeddings, or SetFit: the encoder fine-tuned into tmp/encoder first
            probe, best, table = fit_encoder(r, train_set, val_set, p, tmp / ENCODER_DIR)
            seconds, head = time.perf_counter() - start, int(probe.lr.coef_.size + probe.lr.intercept_.size)
            encoder = encoder_params(probe.encoder)
            trainable, total = head + (encoder if r.setfit else 0), head + encoder
            kind = {"method": "setfit_logreg" if r.setfit else "probe_logreg", "features": r.features}
            chosen = {"C": best["C"]}
            save_probe(probe, tmp, labels, ENCODER_DIR if r.setfit else r.features)
        info = {
            "run": name, "init": "none", "method": kind.pop("method"), "augmented": r.augmented,
            "train_examples": len(train_set[0]), **kind,
            "trainable_params": trainable, "total_params": total, "trainable_share": round(trainable / total, 5),
            "train_seconds": round(seconds, 1),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "chosen": chosen, "best_val_accuracy": best["val_accuracy"], "search": table,
        }  # fmt: skip
        write_json(meta({"train": asdict(p), "run": recorded(r)}, **info), tmp / "meta.json")
    summary = {k: v for k, v in info.items() if k != "search"}
    write_json(summary, metrics_dir / f"{name}.json")  # with the measurements meta.json leaves out
    return summary


def encoder_params(encoder: str) -> int:
    """The encoder's parameter count (its body as AutoModel loads it)."""
    from transformers import AutoModel

    from stages.training import from_checkpoint

    return sum(t.numel() for t in from_checkpoint(AutoModel.from_pretrained, encoder, "features").parameters())


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
