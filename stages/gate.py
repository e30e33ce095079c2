"""gate: Great Expectations suites that check an artifact before any later stage may use it.

Reads  ingest:   data/1_ingest (corpus, task, parallel, splits.json)
       clean:    data/2_clean/corpus
       tokenize: data/3_tokenize (blocks, task, tokenizer, meta.json)
       augment:  data/6_augment, data/1_ingest/task
Writes reports/gates/<name>.json  every expectation with its observed value and bound; written only on success,
                                  and the next stage depends on it, so a failed gate stops the pipeline there
       reports/data_docs/<name>/  GX Data Docs of the run, pass or fail (open index.html; not tracked)

    python -m stages.gate ingest      # or clean, tokenize, augment

Each artifact has one function turning it into named tables (pandas) with their expectations. Checks that span
tables (leakage, labels preserved) first become derived columns (`chapter_split`, `label_matches_source`), so every
check is a GX expectation with observed values and offending rows. A failure prints the gate, the expectation, the
column, the observed value against the bound and up to 5 offending rows, and exits 1.
"""

import argparse
import copy
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from stages.clean import STOPWORDS
from stages.common import fail, load_params, write_json
from stages.ingest import LABELS

INGEST = Path("data/1_ingest")
CLEAN = Path("data/2_clean/corpus")
TOKENIZE = Path("data/3_tokenize")
AUGMENT = Path("data/6_augment")
REPORTS = Path("reports/gates")
DOCS = Path("reports/data_docs")  # GX Data Docs, one site per gate (gitignored: rebuilt on every run)

EXAMPLES = 5  # offending rows shown per failed expectation
LABEL_IDS = list(range(len(LABELS)))
MARKUP = r"<[A-Za-z/][^<>]*>|&(?:amp|lt|gt|quot|nbsp);"  # what stages.clean.strip_markup removes
TASK_SPLITS = ["train", "validation", "test", "pool"]
AUGMENT_COLUMNS = ["text", "label", "source_text", "book", "chapter", "verse"]
LEAK = "no text from a validation or test chapter (leakage)"


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


@dataclass(frozen=True)
class AugmentGateParams:
    min_rows: int  # paraphrases; 0 lets an empty augmentation pass
    min_length_ratio: float  # len(text) / len(source_text)
    max_length_ratio: float


# --- the GX built-ins the gates use, as short constructors --------------------------------------------------------


def rows(low: int):
    return gxe.ExpectTableRowCountToBeBetween(min_value=low)


def not_null(column: str, why: str | None = None):
    return gxe.ExpectColumnValuesToNotBeNull(column=column, description=why)


def unique(*columns: str):
    """One column's values unique, or the combination of several columns' (one row per verse)."""
    if len(columns) == 1:
        return gxe.ExpectColumnValuesToBeUnique(column=columns[0])
    return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(columns))


def in_set(column: str, values: list, why: str | None = None, **kwargs):
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values, description=why, **kwargs)


def between(column: str, low=None, high=None, why: str | None = None):
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, description=why)


def lengths(column: str, low: int | None = None, high: int | None = None):
    return gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=low, max_value=high)


# --- derived columns: pure ----------------------------------------------------------------------------------------


def stopword_ratio(text: str) -> float:
    """Share of words that are English function words, counted as stages.clean.language_filter does.

    'the law of Moses' -> 0.5
    """
    words = re.findall(r"[a-záéíóúñü]+", text.lower())
    return sum(w in STOPWORDS for w in words) / max(1, len(words))


def chapter_split(df: pd.DataFrame, splits: dict[str, str]) -> pd.Series:
    """Each row's split per splits.json ('Gen.1' -> 'train'); 'unknown' for a chapter it does not list."""
    return (df["book"] + "." + df["chapter"].astype(str)).map(splits).fillna("unknown")


def per_class(labels: pd.Series) -> pd.DataFrame:
    """Rows (label, genre, count) for every genre, 0 for an absent one: [0, 0, 2] -> counts 2, 0, 1, 0, ..."""
    counts = labels.value_counts().reindex(LABEL_IDS, fill_value=0)
    return pd.DataFrame({"label": LABEL_IDS, "genre": LABELS, "count": counts.to_numpy()})


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


def require(df: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        fail(f"{where}: missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}")


# --- one function per artifact: {table name: (dataframe, expectations)} -----------------------------------------


def ingest_tables(p: IngestGateParams, root: Path = INGEST) -> dict:
    """Corpus, task and parallel pairs: labels, lengths, class balance, no held-out chapter where it must not be."""
    from datasets import load_from_disk

    splits = json.loads((root / "splits.json").read_text())
    task, parallel = load_from_disk(str(root / "task")), load_from_disk(str(root / "parallel"))
    if missing := [s for s in TASK_SPLITS if s not in task]:
        fail(f"{root}/task: no split(s) {', '.join(missing)}; has {', '.join(task)}")
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
        checks = [not_null("label"), in_set("label", LABEL_IDS), not_null("text")]
        checks += [lengths("text", p.min_verse_chars, p.max_verse_chars), unique("book", "chapter", "verse")]
        checks += [in_set("chapter_split", [home], f"every verse from a {home} chapter")]
        if split in ("validation", "test"):
            df["text_in_train"] = df["text"].isin(train_texts)
            checks.append(in_set("text_in_train", [False], "no verse of a training chapter reappears in evaluation"))
        tables[f"task.{split}"] = (df, checks)
        if split != "pool":
            bounds = (p.min_train_per_class, p.max_train_per_class) if split == "train" else (p.min_eval_per_class,)
            count = between("count", *bounds, why="every genre present, none dominant")
            tables[f"task.{split}.per_class"] = (per_class(df["label"]), [count])
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
        in_set("is_duplicate", [False], "few exact duplicates", mostly=1 - p.max_duplicate_rate),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=MARKUP, description="no markup left"),
    ]
    return {"corpus": (df, checks)}


def tokenize_tables(p: TokenizeGateParams, root: Path = TOKENIZE) -> dict:
    """Blocks of exactly block_size in-vocabulary ids, not padding; task sequences non-empty and in vocabulary."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    made_with = json.loads((root / "meta.json").read_text())["params"]  # the tokenize params these were made with
    block_size, max_length = made_with["block_size"], made_with["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))  # loads as every consumer will
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    in_vocab = [between("min_id", 0), between("max_id", high=vocab - 1, why=f"ids below the vocabulary size {vocab}")]

    tables = {}
    blocks, task = load_from_disk(str(root / "blocks")), load_from_disk(str(root / "task"))
    for split, min_blocks in (("train", p.min_train_blocks), ("validation", p.min_validation_blocks)):
        df = blocks[split].to_pandas()
        require(df, ["input_ids"], f"{root}/blocks/{split}")
        df = df.assign(**id_columns(df["input_ids"], pad))
        checks = [rows(min_blocks), between("n_ids", block_size, block_size, f"exactly block_size={block_size} ids")]
        checks += [*in_vocab, between("pad_fraction", high=p.max_block_pad_fraction, why=f"pad id {pad}")]
        tables[f"blocks.{split}"] = (df, checks)
    for split in task:
        df = task[split].to_pandas()
        require(df, ["input_ids", "label"], f"{root}/task/{split}")
        df = df.assign(**id_columns(df["input_ids"], pad)).drop(columns="pad_fraction")
        checks = [between("n_ids", 1, max_length, f"non-empty, truncated at max_length={max_length}"), *in_vocab]
        tables[f"task.{split}"] = (df, [*checks, not_null("label"), in_set("label", LABEL_IDS)])
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
    checks = [rows(p.min_rows), not_null("text"), lengths("text", 1), in_set("label", LABEL_IDS)]
    checks += [
        not_null("source_label", "source_text is a verse of the task's train split"),
        in_set("label_matches_source", [True], "label preserved"),
        in_set("same_as_source", [False], "a paraphrase, not a copy"),
        between("length_ratio", p.min_length_ratio, p.max_length_ratio),
        in_set("chapter_split", ["train"], "from training chapters only"),
    ]
    return {"augment": (df, checks)}


GATES = {
    "ingest": (IngestGateParams, ingest_tables),
    "clean": (CleanGateParams, clean_tables),
    "tokenize": (TokenizeGateParams, tokenize_tables),
    "augment": (AugmentGateParams, augment_tables),
}


# --- running the suites and reporting ----------------------------------------------------------------------------


def shown(value, width: int = 80):
    """A value short enough for a message and valid JSON: long strings and id lists cut, NumPy made plain."""
    if isinstance(value, np.ndarray | list):
        value = list(np.asarray(value).tolist())
        return value if len(value) <= 8 else f"[{', '.join(map(str, value[:8]))}, ...] ({len(value)} ids)"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and len(value) > width:
        return f"{value[:width]}... ({len(value)} chars)"
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def exception_message(info: dict) -> str | None:
    """The error GX caught while computing an expectation (a missing column, a bad type), if any."""
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    return next((v["exception_message"] for v in info.values() if v.get("raised_exception")), None)


def observed_stats(kind: str, values: pd.Series) -> dict:
    """What a column holds, for the report: its range for a bound, its value counts for a set (if few)."""
    if kind == "expect_column_value_lengths_to_be_between":
        values = values.dropna().str.len()
    if kind in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        return {"min": shown(values.min()), "max": shown(values.max())} if values.notna().any() else {}
    if kind == "expect_column_values_to_be_in_set" and values.nunique() <= 10:
        return {"counts": {str(k): int(n) for k, n in values.value_counts().items()}}
    return {}


def summarize(table: str, df: pd.DataFrame, result: dict) -> dict:
    """One expectation's result (GX's JSON dict) as a report entry with up to EXAMPLES offending rows."""
    config, res = result["expectation_config"], result["result"]
    kind = config["type"]
    bound = {k: shown(v) for k, v in config["kwargs"].items() if v is not None and k not in ("batch_id", "column")}
    column = config["kwargs"].get("column") or ", ".join(bound.pop("column_list", []))
    if "observed_value" in res:
        observed = shown(res["observed_value"])
    else:
        values = res.get("partial_unexpected_list", [])
        if kind == "expect_column_value_lengths_to_be_between":
            values = [len(v) for v in values]
        observed = {"unexpected_count": res.get("unexpected_count"), "element_count": res.get("element_count")}
        observed |= observed_stats(kind, df[column]) if column in df else {}
        observed["unexpected_values"] = [shown(v) for v in values]
    rows = [
        {"row": int(i), **{k: shown(v) for k, v in df.loc[i].items()}}
        for i in res.get("partial_unexpected_index_list", [])[:EXAMPLES]
    ]
    entry = {"table": table, "expectation": kind, "column": column or None, "success": bool(result["success"])}
    if config.get("description"):
        entry["description"] = config["description"]
    entry |= {"observed": observed, "bound": bound, "unexpected_examples": rows}
    if error := exception_message(result.get("exception_info") or {}):
        entry["error"] = error
    return entry


def validate(tables: dict, docs: Path | None = None) -> list[dict]:
    """Every table validated against its expectations in one ephemeral GX context; report entries in order.

    docs: a folder to render GX Data Docs (HTML) of this run into, or None for no HTML.
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("artifacts")
    entries = []
    for table, (df, expectations) in tables.items():
        df = df.reset_index(drop=True)  # offending rows are looked up by GX's index
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=[copy.copy(e) for e in expectations]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": df},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
        )
        entries += [summarize(table, df, r.to_json_dict()) for r in result.results]
    if docs is not None:
        shutil.rmtree(docs, ignore_errors=True)
        site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
        site["store_backend"] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())}
        context.add_data_docs_site(site_name="gate", site_config=site)
        context.build_data_docs(site_names=["gate"])
    return entries


def check(name: str, p, docs: Path | None = None, **paths) -> dict:
    """The gate's summary, {gate, success, expectations: [...]}; paths go to the gate's tables function."""
    entries = validate(GATES[name][1](p, **paths), docs)
    return {"gate": name, "success": all(e["success"] for e in entries), "expectations": entries}


def failure_message(summary: dict) -> str:
    """What a person needs to act on a failed gate: each failed expectation, its observed value, bound and rows."""
    failed = [e for e in summary["expectations"] if not e["success"]]
    lines = [f"gate {summary['gate']} failed: {len(failed)} of {len(summary['expectations'])} expectations not met"]
    for e in failed:
        on = f" on column {e['column']!r}" if e["column"] else ""
        why = f" ({e['description']})" if e.get("description") else ""
        bound = ", ".join(f"{k}={v!r}" for k, v in e["bound"].items()) or "none"
        obs = e["observed"]
        if isinstance(obs, dict):
            held = ", ".join(f"{k} {obs[k]}" for k in ("min", "max", "counts") if k in obs)
            held = f" (column {held})" if held else ""
            obs = f"{obs['unexpected_count']} of {obs['element_count']} rows outside{held}"
            obs += f", e.g. {e['observed']['unexpected_values']}"
        lines += [f"- {e['table']}: {e['expectation']}{on}{why}", f"    observed {obs}; bound {bound}"]
        if e.get("error"):
            lines.append(f"    error: {e['error']}")
        for row in e["unexpected_examples"]:
            lines.append(f"    row {row['row']}: " + ", ".join(f"{k}={v!r}" for k, v in row.items() if k != "row"))
    return "\n".join(lines)


def run(name: str, p, report: Path | None = None, docs: Path | None = None, **paths) -> dict:
    """Check the artifact; on success write the report, on failure remove any stale one, explain, and exit 1.

    report: defaults to reports/gates/<name>.json; docs: where to render Data Docs HTML (None: none).
    """
    report = Path(report) if report else REPORTS / f"{name}.json"
    summary = check(name, p, docs, **paths)
    if not summary["success"]:
        report.unlink(missing_ok=True)  # a report from an earlier pass must not let the next stage run
        print(failure_message(summary), file=sys.stderr)
        raise SystemExit(1)
    write_json(summary, report)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.gate", description="Check a stage's artifact with its GX suite."
    )
    parser.add_argument("name", choices=list(GATES), help="the stage whose output to check")
    name = parser.parse_args().name
    start = time.perf_counter()
    summary = run(name, load_params(f"gate.{name}", GATES[name][0]), docs=DOCS / name)
    took = time.perf_counter() - start
    print(f"gate {name}: all {len(summary['expectations'])} expectations met in {took:.1f} s -> {REPORTS / name}.json")


if __name__ == "__main__":
    main()
