"""gate: every gate passes what the real stages make, and names the expectation that catches each injected fault."""

import dataclasses
import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, load_from_disk
from transformers import AutoTokenizer

from stages import clean, gate, ingest, suites, tokenize
from stages.presets import load_params

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
# One to three books of every genre keep the real stages fast (about 2 s in all). Revelation stays out: in the
# bundled WEB, Rev 22:21 carries the translation's whole glossary, which the ingest gate rejects (as it should).
BOOKS = {"Lev", "Ezra", "Neh", "Eccl", "Song", "Hos", "Joel", "Amos", "Mark", "Rom", "Dan"}
AUGMENT_COLUMNS = ["text", "label", "source_text", "book", "chapter", "verse"]
RUNS = ["full", "lora"]  # fine-tuning runs whose predictions the fixture writes
PATHS = {  # where each gate finds its artifact under a data folder laid out like data/ (7_finetune: models/)
    "raw": lambda d: {"root": d / "raw"},
    "ingest": lambda d: {"root": d / "1_ingest"},
    "clean": lambda d: {"corpus": d / "2_clean" / "corpus"},
    "tokenize": lambda d: {"root": d / "3_tokenize"},
    "augment": lambda d: {"augment": d / "6_augment", "task": d / "1_ingest" / "task"},
    "predictions": lambda d: {"models": d / "7_finetune", "task": d / "3_tokenize" / "task", "runs": RUNS},
}
FOLDERS = ["raw", "1_ingest", "2_clean", "3_tokenize", "6_augment", "7_finetune"]
IN_SET, BETWEEN = "expect_column_values_to_be_in_set", "expect_column_values_to_be_between"
LENGTHS, NOT_NULL = "expect_column_value_lengths_to_be_between", "expect_column_values_to_not_be_null"
ROW_COUNT, UNIQUE = "expect_table_row_count_to_equal", "expect_compound_columns_to_be_unique"


def paraphrase(text: str) -> str:
    """A stand-in back-translation: the first word changed. 'And he said' -> 'Then he said'."""
    first, _, rest = text.partition(" ")
    return f"{'Then' if first != 'Then' else 'And'} {rest}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data/ folder from the real stages on a few books: ingest, clean, tokenize; augment and predictions by hand."""
    d = tmp_path_factory.mktemp("data")
    (d / "raw").mkdir()
    for name in ("web", "kjv", "sparv"):
        with (
            gzip.open(ROOT / f"data/raw/{name}.jsonl.gz", "rt") as f,
            gzip.open(d / f"raw/{name}.jsonl.gz", "wt") as out,
        ):
            out.writelines(line for line in f if json.loads(line)["book"] in BOOKS)
    ingest.run(load_params("ingest", ingest.IngestParams, PARAMS), d / "raw", d / "1_ingest", d / "ingest.json")
    clean.run(load_params("clean", clean.CleanParams, PARAMS), d / "1_ingest/corpus", d / "2_clean", d / "clean.json")
    p = dataclasses.replace(load_params("tokenize", tokenize.TokenizeParams, PARAMS), vocab_size=512)
    tokenize.run(p, d / "2_clean/corpus", d / "1_ingest/task", d / "3_tokenize", d / "tokenize.json")
    train = load_from_disk(str(d / "1_ingest/task/train")).to_pandas()
    augmented = train.assign(source_text=train["text"], text=train["text"].map(paraphrase))[AUGMENT_COLUMNS]
    Dataset.from_pandas(augmented, preserve_index=False).save_to_disk(str(d / "6_augment"))
    for run in RUNS:  # every held-out verse predicted right, as stages.finetune.write_predictions writes them
        held_out = [rows_of(d, f"3_tokenize/task/{s}").assign(split=s) for s in suites.HELD_OUT]
        predictions = pd.concat(held_out).rename(columns={"label": "prediction"})
        columns = ["split", *suites.VERSE_KEY, "prediction"]
        write_table(predictions[columns], d / "7_finetune" / run / "predictions.jsonl")
    return d


def params(name: str):
    return load_params(f"gate.{name}", gate.GATES[name][0], PARAMS)


def check(name: str, d: Path) -> dict:
    return gate.check(name, params(name), **PATHS[name](d))


def failed(summary: dict) -> set[tuple[str, str, str]]:
    return {(e["table"], e["expectation"], e["column"]) for e in summary["expectations"] if not e["success"]}


def read_table(path: Path) -> pd.DataFrame:
    """A dataset folder, a gzipped JSON-lines raw file or a JSON-lines predictions file, as a DataFrame."""
    if path.name.endswith(".jsonl.gz"):
        return pd.DataFrame(ingest.read_raw(path))
    if path.suffix == ".jsonl":
        return suites.read_predictions(path)
    return load_from_disk(str(path)).to_pandas()


def write_table(df: pd.DataFrame, path: Path) -> None:
    """The inverse of read_table, in the format the path's name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in json.loads(df.to_json(orient="records")))
    if path.name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt") as f:
            f.write(lines)
    elif path.suffix == ".jsonl":
        path.write_text(lines)
    else:
        shutil.rmtree(path)
        Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False).save_to_disk(str(path))


def home(folder: str) -> str:
    """Where a fixture folder lives in the project: '7_finetune' -> 'models/7_finetune', 'raw' -> 'data/raw'."""
    return f"{'models' if folder == '7_finetune' else 'data'}/{folder}"


def with_fault(data: Path, tmp: Path, folder: str, part: str, fault) -> Path:
    """A copy of data/ whose folder/part (a dataset or a JSON-lines file) went through fault(DataFrame, data)."""
    d = tmp / "data"
    d.mkdir()
    for name in FOLDERS:
        if name == folder:
            shutil.copytree(data / name, d / name)
        else:
            (d / name).symlink_to(data / name)
    write_table(fault(read_table(data / folder / part), data), d / folder / part)
    return d


def set_cell(df: pd.DataFrame, column: str, value, row: int = 0) -> pd.DataFrame:
    """df with one cell replaced (also for list cells, which .loc would try to broadcast)."""
    df = df.copy()
    df[column] = [value if i == row else v for i, v in enumerate(df[column])]
    return df


def rows_of(data: Path, part: str) -> pd.DataFrame:
    return load_from_disk(str(data / part)).to_pandas()


def move_to_test_chapter(df: pd.DataFrame, data: Path) -> pd.DataFrame:
    """The first row relabelled as coming from a test chapter."""
    splits = json.loads((data / "1_ingest/splits.json").read_text())
    book, chapter = next(k for k, s in splits.items() if s == "test").split(".")
    return set_cell(set_cell(df, "book", book), "chapter", int(chapter))


def add_spanish_documents(df: pd.DataFrame, data: Path) -> pd.DataFrame:
    """Five documents of 40 Spanish verses each (the parallel corpus's target side) added."""
    verses = rows_of(data, "1_ingest/parallel/train")["target"]
    spanish = ["\n".join(verses[i * 40 : (i + 1) * 40]) for i in range(5)]
    return pd.concat([df, pd.DataFrame({"id": [f"sparv/{i}" for i in range(5)], "text": spanish})])


def tokenizer_of(data: Path):
    return AutoTokenizer.from_pretrained(data / "3_tokenize/tokenizer")


def id_equal_to_vocab_size(df: pd.DataFrame, data: Path) -> pd.DataFrame:
    """The last id of the first block replaced by the vocabulary size: one past the largest valid id."""
    return set_cell(df, "input_ids", [*df["input_ids"][0][:-1], len(tokenizer_of(data))])


def padding_block(df: pd.DataFrame, data: Path) -> pd.DataFrame:
    return set_cell(df, "input_ids", [tokenizer_of(data).pad_token_id] * len(df["input_ids"][0]))


GLOSSARY = " The following words used in the World English Bible are not very common." * 30


def wrong_split(df: pd.DataFrame, data: Path) -> pd.DataFrame:
    """The test predictions made on the validation verses instead (still labelled test)."""
    validation = df[df["split"] == "validation"]
    return pd.concat([validation, validation.assign(split="test")])


GLUED = "And God said, Let there be light: and there was lightAnd God saw the light, that it was good."

FAULTS = {
    # name: (gate, folder, dataset or file, fault(df, data), expected failures)
    "duplicated_verse": (
        "raw", "raw", "web.jsonl.gz",
        lambda df, _: pd.concat([df, df.head(1)]),
        {("raw.web", UNIQUE, "book, chapter, verse")},
    ),
    "glossary_glued_onto_verse": (
        "raw", "raw", "web.jsonl.gz",
        lambda df, _: set_cell(df, "text", df["text"][0] + GLOSSARY),
        {("raw.web", LENGTHS, "text")},
    ),
    "glued_words": (
        "raw", "raw", "kjv.jsonl.gz",
        lambda df, _: set_cell(df, "text", GLUED),
        {("raw.kjv", "expect_column_values_to_not_match_regex", "text")},
    ),
    "empty_verse": (
        "raw", "raw", "sparv.jsonl.gz",
        lambda df, _: set_cell(df, "text", ""),
        {("raw.sparv", LENGTHS, "text")},
    ),
    "missing_text": (
        "raw", "raw", "web.jsonl.gz",
        lambda df, _: set_cell(df, "text", None),
        {("raw.web", NOT_NULL, "text")},
    ),
    "apocryphal_book": (
        "raw", "raw", "kjv.jsonl.gz",
        lambda df, _: set_cell(df, "book", "Tob"),
        {("raw.kjv", IN_SET, "book")},
    ),
    "unknown_label": (
        "ingest", "1_ingest", "task/train",
        lambda df, _: set_cell(df, "label", len(ingest.LABELS)),
        {("task.train", IN_SET, "label")},
    ),
    "test_verse_in_train": (
        "ingest", "1_ingest", "task/train",
        lambda df, d: pd.concat([df, rows_of(d, "1_ingest/task/test").head(1)]),
        {("task.train", IN_SET, "chapter_split"), ("task.test", IN_SET, "text_in_train")},
    ),
    "genre_missing_from_train": (
        "ingest", "1_ingest", "task/train",
        lambda df, _: df[df["label"] != ingest.LABELS.index("apocalyptic")],
        {("task.train.per_class", BETWEEN, "count")},
    ),
    "glued_appendix": (
        "ingest", "1_ingest", "task/validation",
        lambda df, _: set_cell(df, "text", df["text"][0] + GLOSSARY),
        {("task.validation", LENGTHS, "text")},
    ),
    "empty_document": (
        "ingest", "1_ingest", "corpus",
        lambda df, _: set_cell(df, "text", ""),
        {("corpus", LENGTHS, "text")},
    ),
    "parallel_pair_from_test_chapter": (
        "ingest", "1_ingest", "parallel/train",
        move_to_test_chapter,
        {("parallel.train", IN_SET, "chapter_split")},
    ),
    "spanish_documents": (
        "clean", "2_clean", "corpus",
        add_spanish_documents,
        {("corpus", BETWEEN, "stopword_ratio")},
    ),
    "short_document": (
        "clean", "2_clean", "corpus",
        lambda df, _: set_cell(df, "text", "Amen. Amen."),
        {("corpus", BETWEEN, "n_words"), ("corpus", BETWEEN, "stopword_ratio")},  # too short, and no function word
    ),
    "duplicated_documents": (
        "clean", "2_clean", "corpus",
        lambda df, _: pd.concat([df, df.head(len(df) // 10).assign(id=lambda x: x["id"] + "/copy")]),
        {("corpus", IN_SET, "is_duplicate")},
    ),
    "markup_left": (
        "clean", "2_clean", "corpus",
        lambda df, _: set_cell(df, "text", '<note type="x">a footnote</note> ' + df["text"][0]),
        {("corpus", "expect_column_values_to_not_match_regex", "text")},
    ),
    "token_id_equal_to_vocab_size": (
        "tokenize", "3_tokenize", "blocks/train",
        id_equal_to_vocab_size,
        {("blocks.train", BETWEEN, "max_id")},
    ),
    "truncated_block": (
        "tokenize", "3_tokenize", "blocks/train",
        lambda df, _: set_cell(df, "input_ids", df["input_ids"][0][:100]),
        {("blocks.train", BETWEEN, "n_ids")},
    ),
    "padding_block": (
        "tokenize", "3_tokenize", "blocks/validation",
        padding_block,
        {("blocks.validation", BETWEEN, "pad_fraction")},
    ),
    "half_the_blocks_lost": (
        "tokenize", "3_tokenize", "blocks/train",
        lambda df, _: df.head(len(df) // 2),
        {("blocks.train", ROW_COUNT, None), ("blocks.tokens", BETWEEN, "block_token_ratio")},
    ),
    "empty_task_sequence": (
        "tokenize", "3_tokenize", "task/train",
        lambda df, _: set_cell(df, "input_ids", []),
        {("task.train", BETWEEN, "n_ids")},
    ),
    "task_label_negative": (
        "tokenize", "3_tokenize", "task/test",
        lambda df, _: set_cell(df, "label", -1),
        {("task.test", IN_SET, "label")},
    ),
    "changed_label": (
        "augment", "6_augment", "",
        lambda df, _: set_cell(df, "label", (df["label"][0] + 1) % len(ingest.LABELS)),
        {("augment", IN_SET, "label_matches_source")},
    ),
    "copy_not_paraphrase": (
        "augment", "6_augment", "",
        lambda df, _: set_cell(df, "text", df["source_text"][0]),
        {("augment", IN_SET, "same_as_source")},
    ),
    "paraphrase_lost_content": (
        "augment", "6_augment", "",
        lambda df, _: set_cell(df, "text", df["source_text"][0][: len(df["source_text"][0]) // 4]),
        {("augment", BETWEEN, "length_ratio")},
    ),
    "test_verse_augmented": (
        "augment", "6_augment", "",
        lambda df, d: pd.concat([df, rows_of(d, "1_ingest/task/test").head(1).assign(
            source_text=lambda x: x["text"], text=lambda x: x["text"].map(paraphrase))[AUGMENT_COLUMNS]]),
        {("augment", NOT_NULL, "source_label"), ("augment", IN_SET, "label_matches_source"),
         ("augment", IN_SET, "chapter_split")},
    ),
    "missing_prediction": (
        "predictions", "7_finetune", "full/predictions.jsonl",
        lambda df, _: df.drop(index=df.index[df["split"] == "test"][0]),
        {("full.predictions", ROW_COUNT, None), ("full.coverage", IN_SET, "predicted")},
    ),
    "duplicated_prediction": (
        "predictions", "7_finetune", "lora/predictions.jsonl",
        lambda df, _: pd.concat([df, df.tail(1)]),
        {("lora.predictions", ROW_COUNT, None), ("lora.predictions", UNIQUE, "split, book, chapter, verse")},
    ),
    "prediction_out_of_range": (
        "predictions", "7_finetune", "full/predictions.jsonl",
        lambda df, _: set_cell(df, "prediction", len(ingest.LABELS)),
        {("full.predictions", IN_SET, "prediction")},
    ),
    "predictions_for_wrong_split": (
        "predictions", "7_finetune", "full/predictions.jsonl",
        wrong_split,
        {("full.predictions", ROW_COUNT, None), ("full.predictions", IN_SET, "in_split"),
         ("full.coverage", IN_SET, "predicted")},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(gate.GATES))
def test_real_stage_output_passes(data, name):
    summary = check(name, data)
    assert summary["success"], gate.failure_message(summary)
    assert summary["gate"] == name and len(summary["expectations"]) >= 5


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_caught_by_its_expectation(data, tmp_path, fault, fault_matrix):
    name, folder, part, inject, expected = FAULTS[fault]
    summary = check(name, with_fault(data, tmp_path, folder, part, inject))
    fault_matrix.append(
        {"fault": fault, "gate": name, "artifact": f"{home(folder)}/{part}".rstrip("/"), "expected": sorted(expected,
         key=str), "fired": sorted(failed(summary), key=str), "caught": not summary["success"], "of": len(FAULTS)}
    )  # fmt: skip
    assert not summary["success"]
    assert failed(summary) == expected
    for e in summary["expectations"]:
        if not e["success"]:
            assert e["unexpected_examples"] or not isinstance(e["observed"], dict), e  # offending rows named


def test_empty_augmentation_passes(data, tmp_path):
    # datasets 5.2 can only load an empty Dataset saved with its features and one (empty) shard
    empty = Dataset.from_dict(
        {c: [] for c in AUGMENT_COLUMNS}, features=load_from_disk(str(data / "6_augment")).features
    )
    empty.save_to_disk(str(tmp_path / "6_augment"), num_shards=1)
    summary = gate.check("augment", params("augment"), augment=tmp_path / "6_augment", task=data / "1_ingest/task")
    assert summary["success"], gate.failure_message(summary)
    assert {e["column"]: e["observed"] for e in summary["expectations"]}["text"]["element_count"] == 0


def test_empty_augmentation_without_a_shard_fails_readably(data, tmp_path, capsys):
    Dataset.from_dict({c: [] for c in AUGMENT_COLUMNS}).save_to_disk(str(tmp_path / "6_augment"))  # zero shards
    with pytest.raises(SystemExit):
        gate.check("augment", params("augment"), augment=tmp_path / "6_augment", task=data / "1_ingest/task")
    assert "num_shards=1" in capsys.readouterr().err


def test_failure_names_expectation_column_bound_and_rows_and_removes_stale_report(data, tmp_path, capsys):
    d = with_fault(data, tmp_path, "1_ingest", "task/validation", FAULTS["glued_appendix"][3])
    report = tmp_path / "reports/ingest.json"
    report.parent.mkdir()
    report.write_text('{"success": true}')  # left by an earlier pass
    with pytest.raises(SystemExit) as exit_:
        gate.run("ingest", params("ingest"), report=report, root=d / "1_ingest")
    assert exit_.value.code == 1
    assert not report.exists()
    err = capsys.readouterr().err
    assert err.startswith("gate ingest failed: 1 of ")
    assert "task.validation: expect_column_value_lengths_to_be_between on column 'text'" in err
    assert "1 of " in err and "max_value=1000 (set by gate.ingest.max_verse_chars)" in err  # the bound and its key
    assert "row 0: text='" in err and "chars)" in err  # the offending row, its text cut short


def test_pass_writes_report_and_data_docs(data, tmp_path):
    report, docs = tmp_path / "gates/clean.json", tmp_path / "data_docs/clean"
    gate.run("clean", params("clean"), report=report, docs=docs, corpus=data / "2_clean/corpus")
    summary = json.loads(report.read_text())
    assert summary["gate"] == "clean" and summary["success"]
    entry = next(e for e in summary["expectations"] if e["column"] == "stopword_ratio")
    assert entry["bound"] == {"min_value": params("clean").min_stopword_ratio}
    assert entry["params"] == {"min_value": "gate.clean.min_stopword_ratio"}  # the key a user changes
    assert entry["observed"]["unexpected_count"] == 0 and entry["observed"]["min"] >= 0.25
    assert (docs / "index.html").exists()


def test_every_gate_section_of_params_yaml_loads():
    for name in gate.GATES:
        params(name)


def test_derived_columns_textbook_cases():
    assert suites.stopword_ratio("the law of Moses") == 0.5
    assert suites.stopword_ratio("") == 0.0
    counts = suites.per_class(pd.Series([0, 0, 2]))
    assert counts["count"].tolist() == [2, 0, 1, 0, 0, 0, 0] and counts["genre"][0] == ingest.LABELS[0]
    cols = suites.id_columns(pd.Series([np.array([5, 1, 9]), np.array([], dtype=int)]), pad=1)
    assert cols["n_ids"].tolist() == [3, 0] and cols["min_id"][0] == 1 and cols["max_id"][0] == 9
    assert np.isnan(cols["max_id"][1]) and round(cols["pad_fraction"][0], 3) == 0.333
    split = suites.chapter_split(pd.DataFrame({"book": ["Gen", "Rev"], "chapter": [1, 99]}), {"Gen.1": "test"})
    assert split.tolist() == ["test", "unknown"]
    assert gate.shown("x" * 100).endswith("... (100 chars)") and gate.shown(np.int64(3)) == 3


def test_prediction_columns_textbook_cases():
    rows = pd.DataFrame({"split": ["test", "test", None], "book": ["Gen", "Gen", "Gen"], "verse": [1, 2, 1]})
    keys = pd.DataFrame({"split": ["test"], "book": ["Gen"], "verse": [1]})
    assert suites.has_key(rows, keys, ["split", "book", "verse"]).tolist() == [True, False, False]


def test_glued_words_pattern_spares_real_verses():
    assert not re.search(suites.GLUED, "And God said, Let there be light: and there was light.")
    assert not re.search(suites.GLUED, "En el principio crió Dios los cielos y la tierra.")
    assert re.search(suites.GLUED, "there was lightAnd God saw") and re.search(suites.GLUED, "la tierraY")
