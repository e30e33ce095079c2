"""suites: the Great Expectations suites of the gates, one function per artifact (run by `python -m stages.gate`).

Each function turns its artifact into named tables (pandas) with their expectations: {table: (DataFrame,
[expectation, ...])}. Checks that span tables (leakage, labels preserved, one prediction per test verse) first become
derived columns (`chapter_split`, `label_matches_source`, `predicted`), so every check is a GX expectation with
observed values and offending rows. Reading an artifact is the only I/O here; validating and reporting is
stages/gate.py's job, so this module reads as the list of what each gate checks.

    raw          data/raw/*.jsonl.gz                           before ingest
    ingest       data/1_ingest                                 before clean, translate, augment
    clean        data/2_clean/corpus                           before tokenize
    tokenize     data/3_tokenize                               before pretrain, finetune
    augment      data/6_augment (+ data/1_ingest/task)         before finetune
    predictions  models/7_finetune/<run>/predictions.jsonl     before evaluate
                 (+ data/3_tokenize/task)
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from stages.clean import STOPWORDS
from stages.common import fail
from stages.ingest import BOOK_GENRE, LABELS, read_raw

RAW = Path("data/raw")
INGEST = Path("data/1_ingest")
CLEAN = Path("data/2_clean/corpus")
TOKENIZE = Path("data/3_tokenize")
AUGMENT = Path("data/6_augment")
FINETUNE = Path("models/7_finetune")
PREDICTIONS = "predictions.jsonl"  # in each run's folder, written by stages.finetune.write_predictions

MARKUP = r"<[A-Za-z/][^<>]*>|&(?:amp|lt|gt|quot|nbsp);"  # what stages.clean_steps.strip_markup removes
TASK_SPLITS = ["train", "validation", "test", "pool"]
AUGMENT_COLUMNS = ["text", "label", "source_text", "book", "chapter", "verse"]
LEAK = "no text from a validation or test chapter (leakage)"
VERSE_KEY = ["book", "chapter", "verse"]
HELD_OUT = ["validation", "test"]  # the splits each fine-tuning run predicts; evaluate scores one of them
# Words glued together ('theLORD', 'tierraY'): what stripping markup without leaving a space does. Checked on the
# bundled data: no verse of web, kjv or sparv matches (camel-case names do not occur in these translations).
GLUED = r"[a-záéíóúñü][A-ZÁÉÍÓÚÑ]"


@dataclass(frozen=True)
class RawGateParams:
    min_verses: int  # per translation file
    min_verse_chars: int
    max_verse_chars: int  # a verse far longer than any real one has text glued on (WEB's glossary once was)


@dataclass(frozen=True)
class IngestGateParams:
    min_corpus_documents: int
    min_document_chars: int  # per corpus document (a chapter)
    max_document_chars: int
    min_verse_chars: int  # per task verse and per side of a parallel pair
    max_verse_chars: int
    min_train_per_class: int  # labeled training verses per genre
    max_train_per_class: int
    min_eval_per_class: int  # validation and test verses per genre


@dataclass(frozen=True)
class CleanGateParams:
    min_documents: int
    min_words: int  # per document
    max_words: int
    max_duplicate_rate: float  # share of documents whose text repeats an earlier document's
    min_stopword_ratio: float  # per document, share of words that are English function words

    def validate(self):
        for name in ("max_duplicate_rate", "min_stopword_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                yield f"{name}: must be in [0, 1], got {getattr(self, name)}"


@dataclass(frozen=True)
class TokenizeGateParams:
    min_train_blocks: int
    min_validation_blocks: int
    max_block_pad_fraction: float  # share of pad ids in one pre-training block
    max_block_token_drift: float  # |tokens in blocks / corpus tokens - 1|, the corpus count from meta.json

    def validate(self):
        if not 0 <= self.max_block_token_drift < 1:
            yield f"max_block_token_drift: must be in [0, 1), got {self.max_block_token_drift}"


@dataclass(frozen=True)
class AugmentGateParams:
    min_rows: int  # paraphrases; 0 lets an empty augmentation pass
    min_length_ratio: float  # len(text) / len(source_text)
    max_length_ratio: float


@dataclass(frozen=True)
class PredictionsGateParams:
    """No bounds: the gate checks that predictions are well formed. A run that predicts one class for nearly
    everything is a finding, not a malformed artifact: evaluate marks it `collapsed` (evaluate.max_class_share)."""


# --- bounds that know their params key ------------------------------------------------------------------------


class KeyedInt(int):
    key: str


class KeyedFloat(float):
    key: str


class Keyed:
    """A gate's params whose numbers remember their params.yaml key, so a failed bound can name the key to change:
    Keyed(IngestGateParams(min_document_chars=100, ...), "gate.ingest").min_document_chars -> 100 with .key
    "gate.ingest.min_document_chars". Arithmetic on one (1 - drift) gives a plain number: its key is given apart."""

    def __init__(self, params, section: str):
        self._params, self._section = params, section

    def __getattr__(self, name: str):
        value = getattr(self._params, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        keyed = (KeyedInt if isinstance(value, int) else KeyedFloat)(value)
        keyed.key = f"{self._section}.{name}"
        return keyed


def key_of(value) -> str | None:
    """The params key a Keyed bound came from; None for a plain number."""
    return getattr(value, "key", None)


def keys(**bounds) -> dict | None:
    """GX meta naming the params key of each bound that has one: {"params": {"min_value": "gate.x.y"}}."""
    named = {arg: key_of(v) for arg, v in bounds.items()}
    named = {arg: key for arg, key in named.items() if key}
    return {"params": named} if named else None


def plain(value):
    """A keyed bound as the plain number GX stores."""
    return value if value is None else type(value).__mro__[1](value) if hasattr(value, "key") else value


# --- the GX built-ins the gates use, as short constructors --------------------------------------------------------


def rows(low: int):
    return gxe.ExpectTableRowCountToBeBetween(min_value=plain(low), meta=keys(min_value=low))


def rows_equal(n: int, why: str | None = None):
    return gxe.ExpectTableRowCountToEqual(value=n, description=why)


def not_null(column: str, why: str | None = None):
    return gxe.ExpectColumnValuesToNotBeNull(column=column, description=why)


def unique(*columns: str):
    """One column's values unique, or the combination of several columns' (one row per verse)."""
    if len(columns) == 1:
        return gxe.ExpectColumnValuesToBeUnique(column=columns[0])
    return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(columns))


def in_set(column: str, values: list, why: str | None = None, mostly: float = 1.0, mostly_key: str | None = None):
    meta = {"params": {"mostly": mostly_key}} if mostly_key else None
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values, description=why, mostly=mostly, meta=meta)


def between(column: str, low=None, high=None, why: str | None = None, key: str | None = None):
    """Values in [low, high]; `key` names the params key of a bound computed from one (1 - drift)."""
    meta = keys(min_value=low, max_value=high) or ({"params": {"min_value": key, "max_value": key}} if key else None)
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=plain(low), max_value=plain(high),
                                             description=why, meta=meta)  # fmt: skip


def lengths(column: str, low: int | None = None, high: int | None = None):
    return gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=plain(low), max_value=plain(high),
                                                   meta=keys(min_value=low, max_value=high))  # fmt: skip


# --- derived columns: pure ----------------------------------------------------------------------------------------


def stopword_ratio(text: str) -> float:
    """Share of words that are English function words (stages.clean.STOPWORDS): a check beside clean's lingua.

    'the law of Moses' -> 0.5
    """
    words = re.findall(r"[a-záéíóúñü]+", text.lower())
    return sum(w in STOPWORDS for w in words) / max(1, len(words))


def chapter_split(df: pd.DataFrame, splits: dict[str, str]) -> pd.Series:
    """Each row's split per splits.json ('Gen.1' -> 'train'); else its book's, where splits.json names a whole
    source (a user's data: 'corpus' -> 'train'); 'unknown' for a chapter it does not list."""
    return (df["book"] + "." + df["chapter"].astype(str)).map(splits).fillna(df["book"].map(splits)).fillna("unknown")


def label_names(task) -> list[str]:
    """The task's label names, from the ClassLabel of its splits (a split rewritten without one takes another's)."""
    for split in task.values():
        if hasattr(feature := split.features.get("label"), "names"):
            return list(feature.names)
    fail(f"no split of the task has a ClassLabel label column (splits: {', '.join(task)})")


def per_class(labels: pd.Series, names: list[str] = LABELS) -> pd.DataFrame:
    """Rows (label, genre, count) for every class (genre, or a user's label), 0 for an absent one: [0, 0, 2] ->
    counts 2, 0, 1, 0, ..."""
    ids = list(range(len(names)))
    counts = labels.value_counts().reindex(ids, fill_value=0)
    return pd.DataFrame({"label": ids, "genre": names, "count": counts.to_numpy()})


def id_columns(ids: pd.Series, pad: int) -> dict[str, pd.Series]:
    """n_ids, min_id, max_id, pad_fraction per row of token ids; min/max are NaN for an empty row (n_ids fails it).

    [[5, 1, 9]] with pad 1 -> n_ids 3, min_id 1, max_id 9, pad_fraction 0.333
    """
    ids = ids.map(np.asarray)
    return {
        "n_ids": ids.map(len),
        "min_id": ids.map(lambda x: x.min() if len(x) else np.nan),
        "max_id": ids.map(lambda x: x.max() if len(x) else np.nan),
        "pad_fraction": ids.map(lambda x: float(np.mean(x == pad)) if len(x) else 1.0),
    }


def has_key(df: pd.DataFrame, keys: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Whether each row's `columns` occur as a row of `keys`; a row with a null key has none.

    rows (test, Gen, 1, 1), (test, Gen, 1, 2) against keys [(test, Gen, 1, 1)] -> [True, False]
    """
    known = set(keys[columns].itertuples(index=False, name=None))
    return pd.Series([t in known for t in df[columns].itertuples(index=False, name=None)], index=df.index)


def require(df: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        fail(f"{where}: missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}")


# --- one function per artifact: {table name: (dataframe, expectations)} -----------------------------------------


def raw_tables(p: RawGateParams, root: Path = RAW) -> dict:
    """Each translation file: one row per verse of a known book, every field present, text sane, no glued words."""
    files = sorted(root.glob("*.jsonl.gz"))
    if not files:
        fail(f"{root}: no *.jsonl.gz translation files; rebuild them with `python -m scripts.build_raw`")
    tables = {}
    for path in files:
        df = pd.DataFrame(read_raw(path), columns=[*VERSE_KEY, "text"])  # read as ingest reads it
        checks = [rows(p.min_verses), *(not_null(c) for c in [*VERSE_KEY, "text"])]
        checks += [in_set("book", sorted(BOOK_GENRE), "an OSIS id of the 66 books"), between("chapter", 1)]
        checks += [between("verse", 1), unique(*VERSE_KEY), lengths("text", p.min_verse_chars, p.max_verse_chars)]
        checks.append(gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=GLUED, description="no glued words"))
        tables[f"raw.{path.name.removesuffix('.jsonl.gz')}"] = (df, checks)
    return tables


def ingest_tables(p: IngestGateParams, root: Path = INGEST) -> dict:
    """Corpus, task and parallel pairs: labels, lengths, class balance, no held-out chapter where it must not be."""
    from datasets import load_from_disk

    splits = json.loads((root / "splits.json").read_text())
    task, parallel = load_from_disk(str(root / "task")), load_from_disk(str(root / "parallel"))
    if missing := [s for s in TASK_SPLITS if s not in task]:
        fail(f"{root}/task: no split(s) {', '.join(missing)}; has {', '.join(task)}")
    names = label_names(task)
    label_ids = list(range(len(names)))
    frames = {"corpus": load_from_disk(str(root / "corpus")).to_pandas()}
    frames |= {f"task.{s}": task[s].to_pandas() for s in TASK_SPLITS}
    frames |= {f"parallel.{s}": parallel[s].to_pandas() for s in parallel}
    for name, df in frames.items():
        need = {"corpus": ["id", "text"], "task": ["text", "label", "verse"], "parallel": ["source", "target"]}
        require(df, ["book", "chapter", *need[name.split(".")[0]]], f"{root}/{name.replace('.', '/')}")
        df["chapter_split"] = chapter_split(df, splits)

    corpus = [rows(p.min_corpus_documents), unique("id"), not_null("text")]
    corpus += [lengths("text", p.min_document_chars, p.max_document_chars), in_set("chapter_split", ["train"], LEAK)]
    tables = {"corpus": (frames["corpus"], corpus)}
    train_texts = {*frames["task.pool"]["text"], *frames["task.train"]["text"]}  # train should be in pool already
    for split in TASK_SPLITS:
        df, home = frames[f"task.{split}"], "train" if split == "pool" else split
        checks = [not_null("label"), in_set("label", label_ids), not_null("text")]
        checks += [lengths("text", p.min_verse_chars, p.max_verse_chars), unique("book", "chapter", "verse")]
        checks += [in_set("chapter_split", [home], f"every verse from a {home} chapter")]
        if split in ("validation", "test"):
            df["text_in_train"] = df["text"].isin(train_texts)
            checks.append(in_set("text_in_train", [False], "no verse of a training chapter reappears in evaluation"))
        tables[f"task.{split}"] = (df, checks)
        if split != "pool":
            bounds = (p.min_train_per_class, p.max_train_per_class) if split == "train" else (p.min_eval_per_class,)
            count = between("count", *bounds, why="every genre present, none dominant")
            tables[f"task.{split}.per_class"] = (per_class(df["label"], names), [count])
    for split in parallel:
        sides = [lengths(c, p.min_verse_chars, p.max_verse_chars) for c in ("source", "target")]
        tables[f"parallel.{split}"] = (frames[f"parallel.{split}"], [*sides, in_set("chapter_split", ["train"], LEAK)])
    return tables


def clean_tables(p: CleanGateParams, corpus: Path = CLEAN) -> dict:
    """The clean corpus: enough documents, each of sane length, English, without markup or duplicates."""
    from datasets import load_from_disk

    df = load_from_disk(str(corpus)).to_pandas()
    require(df, ["id", "text"], str(corpus))
    text = df["text"].fillna("")
    df["n_words"] = text.str.split().str.len()
    df["stopword_ratio"] = text.map(stopword_ratio)
    df["is_duplicate"] = df["text"].duplicated()
    checks = [rows(p.min_documents), unique("id"), not_null("text"), between("n_words", p.min_words, p.max_words)]
    checks += [
        between("stopword_ratio", p.min_stopword_ratio, why="English"),
        in_set("is_duplicate", [False], "few duplicates", 1 - p.max_duplicate_rate, key_of(p.max_duplicate_rate)),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=MARKUP, description="no markup left"),
    ]
    return {"corpus": (df, checks)}


def tokenize_tables(p: TokenizeGateParams, root: Path = TOKENIZE) -> dict:
    """Blocks of exactly block_size in-vocabulary ids, not padding, as many as the corpus's token count allows; task
    sequences non-empty and in vocabulary.

    The corpus's token count is the one tokenize recorded in meta.json (`corpus_tokens`, the clean corpus encoded).
    Packing adds one EOS per document and drops under one block per split, so the blocks hold that count within
    `max_block_token_drift`; a lost or duplicated shard of blocks moves it far more.
    """
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    made = json.loads((root / "meta.json").read_text())  # the tokenize params these were made with, and counts
    block_size, max_length = made["params"]["block_size"], made["params"]["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))  # loads as every consumer will
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    in_vocab = [between("min_id", 0), between("max_id", high=vocab - 1, why=f"ids below the vocabulary size {vocab}")]

    tables, block_tokens = {}, 0
    blocks, task = load_from_disk(str(root / "blocks")), load_from_disk(str(root / "task"))
    label_ids = list(range(len(label_names(task))))
    for split, min_blocks in (("train", p.min_train_blocks), ("validation", p.min_validation_blocks)):
        df = blocks[split].to_pandas()
        require(df, ["input_ids"], f"{root}/blocks/{split}")
        df = df.assign(**id_columns(df["input_ids"], pad))
        checks = [rows(min_blocks), rows_equal(made["counts"]["blocks"][split], "as many as meta.json records")]
        checks += [between("n_ids", block_size, block_size, f"exactly block_size={block_size} ids"), *in_vocab]
        checks += [between("pad_fraction", high=p.max_block_pad_fraction, why=f"pad id {pad}")]
        tables[f"blocks.{split}"] = (df, checks)
        block_tokens += int(df["n_ids"].sum())
    corpus_tokens = made["counts"]["corpus_tokens"]
    count = {"corpus_tokens": [corpus_tokens], "block_tokens": [block_tokens]}
    count["block_token_ratio"] = [block_tokens / max(1, corpus_tokens)]
    drift = p.max_block_token_drift
    ratio = between(
        "block_token_ratio", 1 - drift, 1 + drift, "tokens in blocks / corpus tokens (meta.json)", drift.key
    )
    tables["blocks.tokens"] = (pd.DataFrame(count), [ratio])
    for split in task:
        df = task[split].to_pandas()
        require(df, ["input_ids", "label"], f"{root}/task/{split}")
        df = df.assign(**id_columns(df["input_ids"], pad)).drop(columns="pad_fraction")
        checks = [between("n_ids", 1, max_length, f"non-empty, truncated at max_length={max_length}"), *in_vocab]
        tables[f"task.{split}"] = (df, [*checks, not_null("label"), in_set("label", label_ids)])
    return tables


def augment_tables(p: AugmentGateParams, augment: Path = AUGMENT, task: Path = INGEST / "task") -> dict:
    """Paraphrases of training verses: label kept, text changed but of similar length, from training chapters only.

    The training chapters are read from the task's pool (every verse of the training chapters), so the gate reads
    nothing beyond its declared dependencies.
    """
    from datasets import load_from_disk

    try:
        df = load_from_disk(str(augment)).to_pandas()
    except IndexError:  # datasets 5.2 saves an empty Dataset as zero shards, which it then cannot load
        fail(f"{augment}: an empty dataset saved without a shard cannot be loaded; save it with num_shards=1")
    require(df, AUGMENT_COLUMNS, str(augment))
    ingested = load_from_disk(str(task))
    train = ingested["train"].to_pandas()
    label_of = dict(zip(train["text"], train["label"], strict=True))
    train_chapters = set(zip(ingested["pool"]["book"], ingested["pool"]["chapter"], strict=True))
    df["source_label"] = df["source_text"].map(label_of)  # NaN: the source is no training verse
    df["label_matches_source"] = df["label"] == df["source_label"]
    df["same_as_source"] = df["text"] == df["source_text"]
    df["length_ratio"] = (df["text"].str.len() / df["source_text"].str.len()).astype(float)
    in_train = [(b, c) in train_chapters for b, c in zip(df["book"], df["chapter"], strict=True)]
    df["chapter_split"] = pd.Series(["train" if t else "not_train" for t in in_train], index=df.index, dtype=object)
    label_ids = list(range(len(label_names(ingested))))
    checks = [rows(p.min_rows), not_null("text"), lengths("text", 1), in_set("label", label_ids)]
    checks += [
        not_null("source_label", "source_text is a verse of the task's train split"),
        in_set("label_matches_source", [True], "label preserved"),
        in_set("same_as_source", [False], "a paraphrase, not a copy"),
        between("length_ratio", p.min_length_ratio, p.max_length_ratio),
        in_set("chapter_split", ["train"], "from training chapters only"),
    ]
    return {"augment": (df, checks)}


def read_predictions(path: Path) -> pd.DataFrame:
    """A run's predictions.jsonl as a table (split, book, chapter, verse, prediction); a missing key is null."""
    if not path.exists():
        fail(f"{path}: no predictions; the finetune stage writes them (`dvc repro finetune`)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["split", *VERSE_KEY, "prediction"])


def predictions_tables(
    p: PredictionsGateParams, runs: list[str], models: Path = FINETUNE, task: Path = TOKENIZE / "task"
) -> dict:
    """Each run's predictions: exactly one per held-out verse (ids match the split), labels in the label set. `runs`
    are the keys of finetune.runs (the runs evaluate scores)."""
    from datasets import load_from_disk

    ingested = load_from_disk(str(task))
    label_ids = list(range(len(label_names(ingested))))
    held_out = pd.concat([ingested[s].to_pandas()[VERSE_KEY].assign(split=s) for s in HELD_OUT], ignore_index=True)
    key = ["split", *VERSE_KEY]
    tables = {}
    for run in runs:
        df = read_predictions(models / run / PREDICTIONS)
        df["in_split"] = has_key(df, held_out, key)
        checks = [rows_equal(len(held_out), f"one per verse of {' and '.join(HELD_OUT)}"), unique(*key)]
        checks += [in_set("in_split", [True], "a verse of the split it names"), in_set("split", HELD_OUT)]
        checks += [not_null("prediction"), in_set("prediction", label_ids)]
        coverage = held_out.assign(predicted=has_key(held_out, df, key))
        tables[f"{run}.predictions"] = (df, checks)
        tables[f"{run}.coverage"] = (coverage, [in_set("predicted", [True], "every held-out verse predicted")])
    return tables


GATES = {
    "raw": (RawGateParams, raw_tables),
    "ingest": (IngestGateParams, ingest_tables),
    "clean": (CleanGateParams, clean_tables),
    "tokenize": (TokenizeGateParams, tokenize_tables),
    "augment": (AugmentGateParams, augment_tables),
    "predictions": (PredictionsGateParams, predictions_tables),
}
