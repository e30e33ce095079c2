"""sources + ingest.source own: every format, globs, column mapping, label inference, the seeded split, streaming, and
each bad source failing early with a message that names the key and the file."""

import csv
import dataclasses
import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from specialist.scoring import Bootstrap
from stages import augment, ingest, translate
from stages.common import ParamsError, from_dict
from stages.evaluate import claim_lines, claim_results
from stages.presets import load_params
from stages.sources import Source, expand, label_names, rows, split_rows

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
ROWS = [{"text": "Great kettle, works well.", "label": "pos"}, {"text": "Broke in a day.", "label": "neg"}]


def write(path: Path, rows: list[dict], fmt: str) -> Path:
    """rows as a file of the format: jsonl, csv, tsv, parquet or text (the texts, one a line); .gz compresses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    if fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
        return path
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps(r) + "\n" for r in rows)
        elif fmt == "text":
            f.writelines(r["text"] + "\n" for r in rows)
        else:
            w = csv.DictWriter(f, list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    return path


def read_all(s: Source, need=None) -> list[dict]:
    return [row for _, row in rows(s, "task", need or {"text_column": "text"})]


def error(capsys, fn, *args, **kwargs) -> str:
    with pytest.raises(SystemExit):
        fn(*args, **kwargs)
    return capsys.readouterr().err


@pytest.mark.parametrize("name, fmt", [("a.jsonl", "jsonl"), ("a.jsonl.gz", "jsonl"), ("a.csv", "csv"),
                                       ("a.tsv", "tsv"), ("a.parquet", "parquet"), ("a.csv.gz", "csv")])  # fmt: skip
def test_each_format_reads_the_same_rows_with_its_format_from_the_suffix(tmp_path, name, fmt):
    path = write(tmp_path / name, ROWS, fmt)
    assert read_all(Source(files=str(path))) == ROWS
    assert read_all(Source(files=str(path), format=fmt)) == ROWS


def test_text_files_give_a_row_per_line_or_per_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\n\n  \nsecond line\n")
    assert read_all(Source(files=str(path))) == [{"text": "first line"}, {"text": "second line"}]
    assert read_all(Source(files=str(path), text_by="document")) == [{"text": "first line\n\n  \nsecond line\n"}]


def test_globs_are_expanded_sorted_without_repeats_and_rows_say_where_they_come_from(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        write(tmp_path / "d" / name, ROWS, "jsonl")
    files = expand([str(tmp_path / "d/b.jsonl"), str(tmp_path / "d/*.jsonl")], "corpus")
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    where = [w for w, _ in rows(Source(files=str(tmp_path / "d/*.jsonl")), "task", {"text_column": "text"})]
    assert where == [f"{tmp_path}/d/{name}.jsonl:{n}" for name in "ab" for n in (1, 2)]


def test_rows_stream_so_a_bad_line_fails_only_when_reached(tmp_path, capsys):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{not json\n")
    stream = rows(Source(files=str(path)), "corpus", {"text_column": "text"})
    assert next(stream)[1] == ROWS[0] and next(stream)[1] == ROWS[1]  # read before the bad line is
    assert f"{path}:3: not a JSON line" in error(capsys, next, stream)


def test_a_glob_matching_nothing_fails_naming_the_key(tmp_path, capsys):
    err = error(capsys, read_all, Source(files=str(tmp_path / "nope/*.csv")))
    assert "ingest.task.files" in err and "matches no file" in err


def test_a_missing_column_fails_at_the_header_naming_param_column_and_what_the_file_has(tmp_path, capsys):
    path = tmp_path / "a.csv"
    path.write_text("review,stars\n")  # no row at all: the header alone tells
    err = error(capsys, read_all, Source(files=str(path)), {"text_column": "review", "label_column": "sentiment"})
    assert f"{path}: no column 'sentiment' (ingest.task.label_column); it has 'review', 'stars'" in err
    jsonl = write(tmp_path / "a.jsonl", [{"review": "fine"}], "jsonl")
    err = error(capsys, read_all, Source(files=str(jsonl)), {"text_column": "text"})
    assert f"{jsonl}:1: no column 'text' (ingest.task.text_column); it has 'review'" in err


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.csv", "text,label\ncaf\xe9,pos\n".encode("latin-1"), "latin1.csv:2 is not utf-8 (invalid continuation"),
    ("bad.jsonl.gz", b"\x1f\x8bnot really gzip", "cannot read"),
    ("bad.parquet", b"PAR1 this is not parquet", "cannot read"),
    ("rows.jsonl", b'["a list", "not an object"]\n', "expected a JSON object per line"),
    ("ragged.csv", b"text,label\nfine,pos,extra\n", "quote fields that hold the delimiter"),
])  # fmt: skip
def test_unreadable_or_malformed_files_fail_naming_the_file(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    err = error(capsys, read_all, Source(files=str(path)))
    assert str(path) in err and expected in err


def test_what_excel_and_windows_write_reads_as_plain_utf8(tmp_path):
    bom_crlf = '\ufefftext,label\r\nGreat kettle.,pos\r\n"Broke, in a day.",neg\r\n'.encode()
    (tmp_path / "excel.csv").write_bytes(bom_crlf)
    expected = [{"text": "Great kettle.", "label": "pos"}, {"text": "Broke, in a day.", "label": "neg"}]
    assert read_all(Source(files=str(tmp_path / "excel.csv")), {"text_column": "text"}) == expected
    (tmp_path / "a.txt").write_bytes("\ufeffone line\r\ntwo\r\n".encode())
    assert read_all(Source(files=str(tmp_path / "a.txt"))) == [{"text": "one line"}, {"text": "two"}]
    (tmp_path / "a.jsonl").write_bytes('\ufeff{"text": "x"}\r\n'.encode())
    assert read_all(Source(files=str(tmp_path / "a.jsonl"))) == [{"text": "x"}]


def test_a_latin1_file_reads_with_its_encoding_and_undecodable_lines_are_skipped_and_counted_on_request(
    tmp_path, capsys
):
    path = tmp_path / "old.csv"
    path.write_bytes("text,label\ncaf\xe9 cr\xe8me,pos\n".encode("latin-1"))
    assert read_all(Source(files=str(path), encoding="latin-1")) == [{"text": "café crème", "label": "pos"}]
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"good line\nbad \xff\xfe line\nanother good one\n")
    assert "errors: skip to drop such lines" in error(capsys, read_all, Source(files=str(mixed)))
    drops = Counter()
    got = [r for _, r in rows(Source(files=str(mixed), errors="skip"), "corpus", {"text_column": "text"}, drops)]
    assert got == [{"text": "good line"}, {"text": "another good one"}] and drops == {"undecodable": 1}
    with pytest.raises(ParamsError, match="encoding: unknown encoding 'latin-9000'"):
        from_dict(Source, {"files": "a.csv", "encoding": "latin-9000"}, "ingest.task")


def test_an_excel_file_without_openpyxl_asks_for_a_csv(tmp_path, capsys):
    path = tmp_path / "reviews.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        assert "save it as CSV (CSV UTF-8)" in error(capsys, read_all, Source(files=str(path)))
    else:
        assert "cannot read" in error(capsys, read_all, Source(files=str(path)))


def test_a_link_out_of_the_project_is_refused_with_its_path(tmp_path, monkeypatch, capsys):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("a system file\n")
    project = tmp_path / "project"
    (project / "data/own/corpus").mkdir(parents=True)
    (project / "data/own/corpus/inside.txt").write_text("a real document\n")
    (project / "data/own/corpus/link.txt").symlink_to(outside)
    monkeypatch.chdir(project)
    err = error(capsys, read_all, Source(files="data/own/corpus/*.txt"))
    assert "data/own/corpus/link.txt leads to" in err and str(outside) in err and "outside the project" in err
    (project / "data/own/corpus/link.txt").unlink()
    assert read_all(Source(files="data/own/corpus/*.txt")) == [{"text": "a real document"}]


def test_an_empty_corpus_file_fails_naming_the_source(files, capsys):
    (files / "corpus/a.txt").write_text("")
    err = error(capsys, run_own, files, own_params(files))
    assert "ingest.corpus: no documents in" in err and "corpus/*.txt" in err


def test_bad_params_print_one_line_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("  split: test", "  split: test\n  splitt: x"))
    done = subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: params.yaml: evaluate: unknown key(s) splitt; expected: split, replicates, seed, max_class_share"
    ]


def test_an_unknown_suffix_asks_for_the_format(tmp_path, capsys):
    path = tmp_path / "a.data"
    path.write_text("x\n")
    assert "ingest.task.format: cannot tell the format" in error(capsys, read_all, Source(files=str(path)))
    assert read_all(Source(files=str(path), format="text")) == [{"text": "x"}]


def test_a_local_dataset_folder_loads_through_hf_and_an_uncached_hub_name_fails_clearly(tmp_path, capsys):
    write(tmp_path / "ds/data.csv", ROWS, "csv")
    assert read_all(Source(hf=str(tmp_path / "ds"))) == ROWS
    err = error(capsys, read_all, Source(hf="no-such-user/no-such-dataset-xyz"))
    assert "ingest.task.hf: cannot load no-such-user/no-such-dataset-xyz[train]" in err
    assert "must already be in the Hugging Face cache" in err


def test_labels_are_inferred_sorted_or_checked_against_the_given_set(capsys):
    labeled = [{"label": v, "where": f"a.csv:{i}"} for i, v in enumerate(["pos", "neg", "pos"], 2)]
    assert label_names(labeled, None) == ["neg", "pos"]
    assert label_names([{"label": v, "where": ""} for v in ["10", "2", "1"]], None) == ["1", "2", "10"]
    assert label_names(labeled, ["pos", "neg", "meh"]) == ["pos", "neg", "meh"]  # given: its order, all of it
    err = error(capsys, label_names, labeled, ["pos", "meh"])
    assert "a.csv:3: label 'neg' is not in ingest.task.labels ['pos', 'meh']" in err
    err = error(capsys, label_names, [{"label": "pos", "where": ""}] * 3, None)
    assert "every row has the label 'pos'; a classification task needs at least 2 classes" in err


def test_the_seeded_split_is_per_class_deterministic_and_keeps_train_rows(capsys):
    labels = ["a"] * 10 + ["b"] * 5
    split = split_rows(labels, {"test": 0.2, "validation": 0.2}, seed=1)
    assert split == split_rows(labels, {"test": 0.2, "validation": 0.2}, seed=1)
    assert sorted(i for idx in split.values() for i in idx) == list(range(15))
    assert [labels[i] for i in split["test"]].count("a") == 2 and [labels[i] for i in split["test"]].count("b") == 1
    assert split != split_rows(labels, {"test": 0.2, "validation": 0.2}, seed=2)
    err = error(capsys, split_rows, ["a"] * 5 + ["b"] * 2, {"test": 0.2, "validation": 0.2}, 1)
    assert "class 'b' has 2 rows; holding out test, validation leaves none to train on" in err


# --- ingest.source own -----------------------------------------------------------------------------------------


def reviews(n: int, offset: int = 0) -> list[dict]:
    return [{"review": f"review number {offset + i}: the {'good' if i % 2 else 'bad'} kettle",
             "sentiment": "positive" if i % 2 else "negative"} for i in range(n)]  # fmt: skip


def own_params(tmp_path: Path, **changes) -> ingest.IngestParams:
    base = load_params("ingest", ingest.IngestParams, PARAMS)
    task = Source(files=str(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")
    corpus = Source(files=str(tmp_path / "corpus/*.txt"))
    own = {"source": "own", "task": task, "corpus": corpus, "val_fraction": 0.2, "test_fraction": 0.2}
    return dataclasses.replace(base, train_per_class=4, eval_per_class=3, **{**own, **changes})


def run_own(tmp_path: Path, p: ingest.IngestParams) -> tuple[Path, dict]:
    out = tmp_path / "1_ingest"
    return out, ingest.run(p, out=out, metrics_path=tmp_path / "ingest.json")


@pytest.fixture
def files(tmp_path) -> Path:
    write(tmp_path / "reviews.csv", reviews(40), "csv")
    corpus = ["A long unlabeled review of a toaster that works.", reviews(40)[0]["review"], "Another one, a lamp."]
    write(tmp_path / "corpus/a.txt", [{"text": t} for t in corpus], "text")
    return tmp_path


def test_own_data_becomes_the_three_artifacts_with_the_bundled_columns(files):
    out, counts = run_own(files, own_params(files))
    task = load_from_disk(str(out / "task"))
    assert list(task) == ["train", "validation", "test", "pool"]
    assert task["train"].features["label"].names == ["negative", "positive"]
    assert task["train"].column_names == ["text", "label", "book", "chapter", "verse"]
    assert counts["task_train_per_class"] == {"negative": 4, "positive": 4}
    assert counts["task"] == {"train": 8, "validation": 6, "test": 8, "pool": 24}  # 40: 8 test (all), 8 validation
    splits = json.loads((out / "splits.json").read_text())
    for name in ("validation", "test"):
        assert {splits[f"task.{c}"] for c in task[name]["chapter"]} == {name}
    assert not set(task["test"]["text"]) & set(task["pool"]["text"])
    corpus = load_from_disk(str(out / "corpus"))
    assert corpus.column_names == ["id", "book", "chapter", "translation", "text"]
    assert corpus[0]["id"] == f"{files}/corpus/a.txt:1" and corpus[0]["book"] == "corpus"
    held_out = reviews(40)[0]["review"] in set(task["validation"]["text"]) | set(task["test"]["text"])
    assert counts["corpus_documents"] == 3 - held_out  # a held-out text is no corpus document (test below)
    parallel = load_from_disk(str(out / "parallel"))  # none given: empty, loadable, with the columns translate reads
    assert len(parallel["train"]) == 0 and {"source", "target"} <= set(parallel["train"].column_names)
    assert counts["parallel_skipped"] == "no parallel corpus (ingest.parallel is null)"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["params"]["task"]["label_column"] == "sentiment"
    again, _ = run_own(files / "again", own_params(files))
    assert (again / "splits.json").read_text() == (out / "splits.json").read_text()  # deterministic from the seed


def test_given_validation_and_test_splits_are_used_as_they_are(files):
    write(files / "val.jsonl", reviews(6, 100), "jsonl")
    write(files / "test.parquet", reviews(8, 200), "parquet")
    p = own_params(files)
    task = dataclasses.replace(p.task, validation=Source(files=str(files / "val.jsonl")),
                               test=Source(files=str(files / "test.parquet")))  # fmt: skip
    out, counts = run_own(files, dataclasses.replace(p, task=task))
    ds = load_from_disk(str(out / "task"))
    assert counts["task_splits_given"] == ["validation", "test"] and len(ds["pool"]) == 40
    assert set(ds["validation"]["book"]) == {"validation"} and set(ds["test"]["book"]) == {"test"}
    assert counts["task"]["validation"] == 6 and counts["task"]["test"] == 8  # eval_per_class 3 x 2; every test row


def test_a_corpus_document_that_is_a_held_out_text_is_dropped_and_counted(files):
    write(files / "test.jsonl", reviews(6, 300), "jsonl")  # 3 per class: all of them make the test split
    lines = ["an unlabeled review of a fine toaster", reviews(6, 300)[0]["review"], "another unlabeled one"]
    write(files / "corpus/a.txt", [{"text": t} for t in lines], "text")
    p = own_params(files)
    p = dataclasses.replace(p, task=dataclasses.replace(p.task, test=Source(files=str(files / "test.jsonl"))))
    out, counts = run_own(files, p)
    assert counts["corpus_dropped"] == {"held_out_text": 1} and counts["corpus_documents"] == 2
    assert reviews(6, 300)[0]["review"] not in load_from_disk(str(out / "corpus"))["text"]


def test_an_empty_given_split_fails_naming_it(files, capsys):
    (files / "val.csv").write_text("review,sentiment\n")
    p = own_params(files)
    p = dataclasses.replace(p, task=dataclasses.replace(p.task, validation=Source(files=str(files / "val.csv"))))
    err = error(capsys, run_own, files, p)
    assert "ingest.task.validation: no labeled rows in" in err and "an empty split" in err


def test_a_task_with_one_class_fails(files, capsys):
    write(files / "reviews.csv", [r for r in reviews(40) if r["sentiment"] == "positive"], "csv")
    assert "a classification task needs at least 2 classes" in error(capsys, run_own, files, own_params(files))


def test_a_parallel_corpus_gives_pairs_with_held_out_task_texts_dropped(files):
    pairs = [{"en": f"the kettle {i}", "es": f"la tetera {i}"} for i in range(20)]
    write(files / "pairs.tsv", pairs, "tsv")
    p = own_params(files, parallel=Source(files=str(files / "pairs.tsv"), text_column="en", target_column="es"))
    out, counts = run_own(files, dataclasses.replace(p, parallel_val_chapters=5))
    parallel = load_from_disk(str(out / "parallel"))
    assert counts["parallel"] == {"train": 15, "validation": 5} and "parallel_skipped" not in counts
    assert parallel["train"][0]["source"].startswith("the kettle") and parallel["train"][0]["book"] == "parallel"


def test_the_ingest_gate_passes_a_two_label_task(files):
    from stages import gate
    from stages.suites import IngestGateParams

    out, _ = run_own(files, own_params(files))
    bounds = load_params("gate.ingest", IngestGateParams, PARAMS)
    bounds = dataclasses.replace(bounds, min_corpus_documents=1, min_document_chars=10, min_train_per_class=4,
                                 min_eval_per_class=3)  # fmt: skip
    summary = gate.check("ingest", bounds, root=out)
    assert summary["success"], gate.failure_message(summary)
    per_class = [e for e in summary["expectations"] if e["table"] == "task.train.per_class"]
    assert per_class and per_class[0]["observed"]["element_count"] == 2  # two classes, not the Bible's seven


def test_own_params_are_checked_by_name():
    base = {k: v for k, v in load_params("ingest", ingest.IngestParams, PARAMS).__dict__.items()}
    with pytest.raises(ParamsError, match="ingest.corpus/task: ingest.source own needs both"):
        from_dict(ingest.IngestParams, {**base, "source": "own", "task": None}, "ingest")
    with pytest.raises(ParamsError, match="ingest.task.files/hf: give exactly one"):
        from_dict(ingest.IngestParams, {**base, "source": "own", "corpus": {"files": "x"}, "task": {}}, "ingest")
    with pytest.raises(ParamsError, match="ingest.corpus: labels, validation and test belong to ingest.task"):
        bad = {**base, "source": "own", "corpus": {"files": "x", "labels": ["a"]}, "task": {"files": "y"}}
        from_dict(ingest.IngestParams, bad, "ingest")
    with pytest.raises(ParamsError, match="ingest.task.validation: takes the task's columns and labels"):
        bad = {**base, "source": "own", "corpus": {"files": "x"}, "task": {"files": "y", "validation": {"files": "v",
               "text_column": "review"}}}  # fmt: skip
        from_dict(ingest.IngestParams, bad, "ingest")
    with pytest.raises(ParamsError, match=r"ingest.task: unknown key\(s\) label_col"):
        from_dict(ingest.IngestParams, {**base, "corpus": {"files": "x"}, "task": {"label_col": "y"}}, "ingest")


def test_local_sources_outside_the_ingest_deps_are_refused(tmp_path):
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  ingest:\n    deps: [data/own]\n")
    p = own_params(tmp_path, corpus=Source(files="data/own/corpus/*.txt"))
    problems = ingest.undeclared_sources(p, dvc)
    assert len(problems) == 1 and problems[0].startswith(f"ingest.task: {tmp_path}/reviews.csv is outside")
    inside = dataclasses.replace(p, task=dataclasses.replace(p.task, files="data/own/r.csv"))
    assert ingest.undeclared_sources(inside, dvc) == []


def test_the_bundled_record_leaves_the_own_keys_out():
    p = load_params("ingest", ingest.IngestParams, PARAMS)
    assert p.source == "bundled" and not set(ingest.OWN_KEYS) & set(ingest.recorded_params(p))


# --- no parallel corpus: translate and the pipeline's translators skip; the report says BT was not measured ----


def test_without_pairs_translate_and_pipeline_augment_skip_with_the_reason(files):
    out, _ = run_own(files, own_params(files))
    models, metrics = files / "5_translate", files / "translate.json"
    tp = load_params("translate", translate.TranslateParams, PARAMS)
    t = translate.run(tp, out / "parallel", models, metrics, files / "ckpt", files / "translate.md")
    assert "no parallel corpus" in t["skipped"] and json.loads(metrics.read_text()) == t
    a_params = dataclasses.replace(load_params("augment", augment.AugmentParams, PARAMS), translators="pipeline")
    a = augment.run(a_params, out / "task", models, files / "6_augment", files / "augment.json", cache=None)
    assert "no parallel corpus" in a["skipped"] and "translators is pipeline" in a["skipped"] and a["kept"] == 0
    paraphrases = load_from_disk(str(files / "6_augment"))
    assert len(paraphrases) == 0 and paraphrases.features["label"].names == ["negative", "positive"]


def test_a_bt_run_without_paraphrases_is_reported_as_not_measured():
    run = {"init": "pretrained", "augmented": False, "train_examples": 16}
    refs = [0, 1] * 10
    preds = {"full": refs, "full_bt": refs}
    boot = Bootstrap(list(range(20)), replicates=200)
    (c,) = claim_results({"full": run, "full_bt": {**run, "augmented": True}}, preds, refs, boot)
    assert c["verdict"] == "not measured"
    why = "full_bt trained on no paraphrases (augment skipped or kept none: see metrics/augment.json)"
    assert claim_lines([c]) == [f"- Back-translation adds >= 2 points (full_bt vs full): not measured, {why}."]
    (c,) = claim_results({"full": run, "full_bt": {**run, "augmented": True, "train_examples": 30}}, preds, refs, boot)
    assert c["verdict"] == "does not hold" and c["gap"] == 0.0
    tfidf = {"init": "none", "method": "tfidf_logreg", "augmented": True, "train_examples": 16}
    results = claim_results({"full_bt": {**run, "augmented": True}, "tfidf_bt": tfidf}, preds | {"tfidf_bt": refs},
                            refs, boot)  # fmt: skip
    assert [(c["a"], c["b"], c["verdict"]) for c in results] == [("full_bt", "tfidf_bt", "not resolved")]  # measured


def test_a_dataset_folder_as_the_corpus_streams_through_hf(files):
    write(files / "hub/train.parquet", [{"body": f"document {i} about kettles"} for i in range(5)], "parquet")
    p = own_params(files, corpus=Source(hf=str(files / "hub"), text_column="body"))
    out, counts = run_own(files, p)
    corpus = load_from_disk(str(out / "corpus"))
    assert counts["corpus_documents"] == 5 and corpus[0]["text"] == "document 0 about kettles"
    assert corpus[0]["id"] == f"{files / 'hub'}[train] row 1"


def test_translate_trains_on_a_users_pairs(files):
    pairs = [{"en": f"the {w} kettle is hot", "es": f"la tetera {w} está caliente"} for w in ("red", "big") * 20]
    pairs = [{"en": f"{r['en']} {i}", "es": f"{r['es']} {i}"} for i, r in enumerate(pairs)]
    write(files / "pairs.jsonl", pairs, "jsonl")
    p = own_params(files, parallel=Source(files=str(files / "pairs.jsonl"), text_column="en", target_column="es"))
    out, _ = run_own(files, dataclasses.replace(p, parallel_val_chapters=4))
    tp = load_params("translate", translate.TranslateParams, PARAMS)
    tp = dataclasses.replace(tp, d_model=16, ffn_dim=32, heads=2, vocab_size=200, max_steps=2, batch_size=8,
                             eval_pairs=2, checkpoint_every=0)  # fmt: skip
    m = translate.run(tp, out / "parallel", files / "5_translate", files / "translate.json", files / "ckpt",
                      files / "translate.md")  # fmt: skip
    assert "skipped" not in m and {"en-es", "es-en"} <= set(m)
    assert (files / "5_translate/en-es/config.json").exists()
