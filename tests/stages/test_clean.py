"""clean: each datatrove step drops with its reason (literal documents, datatrove's test style), the dedup stages
catch what they should, the executor settings change nothing in the output, and an emptied corpus fails clearly."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, load_from_disk
from datatrove.data import Document
from datatrove.pipeline.formatters.base import BaseFormatter

from stages.clean import (
    IN,
    METRICS,
    OUT,
    CleanParams,
    executor,
    nothing_kept_message,
    pipelines,
    run,
    run_datatrove,
    steps,
)
from stages.clean_steps import normalize_whitespace, strip_markup
from stages.ingest import read_raw
from stages.presets import load_params
from tests.conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[2]
P = load_params("clean", CleanParams, ROOT / "params.yaml")

ENGLISH = (
    "In the beginning, God created the heavens and the earth. The earth was formless and empty.\n"
    "Darkness was on the surface of the deep and God's Spirit was hovering over the surface of the waters.\n"
    "God said, “Let there be light,” and there was light. God saw the light, and saw that it was good."
)
SPANISH = (
    "EN el principio crió Dios los cielos y la tierra. Y la tierra estaba desordenada y vacía, y las tinieblas "
    "estaban sobre la haz del abismo, y el Espíritu de Dios se movía sobre la haz de las aguas."
)
FRENCH = (
    "Au commencement, Dieu créa les cieux et la terre. La terre était informe et vide: il y avait des ténèbres à "
    "la surface de l'abîme, et l'esprit de Dieu se mouvait au-dessus des eaux. Dieu dit: Que la lumière soit!"
)
BOILERPLATE = (
    "We use cookies to improve your experience. By using this site you accept our privacy policy.\n"
    "Please enable JavaScript in your browser to view this page.\nRead our terms of use before you continue.\n"
    "Click here."
)

NAVIGATION = ["Home", "About us", "Contact", "Blog", "Shop", "Log in", "Sign up", "News", "Events", "Help"]


def verdict(text: str, p: CleanParams = P, tmp: Path = Path("/tmp")) -> tuple[str | None, str | None, str]:
    """(step, reason, text) of the first filter that drops `text` after every formatter, or (None, None, text)."""
    doc = Document(text=text, id="0", metadata={"index": 0})
    for name, step in steps(p, tmp):
        if isinstance(step, BaseFormatter):
            doc.text = step.format(doc.text)
        elif (result := step.filter(doc)) is not True:
            return name, result[1], doc.text
    return None, None, doc.text


def test_a_clean_english_chapter_passes_every_step_unchanged():
    assert verdict(ENGLISH) == (None, None, ENGLISH)


@pytest.mark.parametrize(
    "text, step, reason",
    [
        ("", "empty", "empty"),
        ("<p> </p> &nbsp;", "empty", "empty"),
        (SPANISH, "language", "not_english"),
        (FRENCH, "language", "not_english"),
        ("God said, let there be light. And there was light; it was good.", "gopher_quality", "gopher_short_doc"),
        (BOILERPLATE, "c4", "too_few_sentences"),  # C4 deletes the cookie, JavaScript and policy lines
        (ENGLISH + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4", "lorem_ipsum"),
        (ENGLISH + "\nfunction f() { return 1; }", "c4", "curly_bracket"),
        ("\n".join(["Click here to subscribe to the newsletter and the offers of the week."] * 6),
         "gopher_repetition", "dup_line_frac"),
        (ENGLISH + "\n" + " ".join(f"#tag{i}" for i in range(40)), "gopher_quality", "gopher_too_many_hashes"),
        ("\n".join([*NAVIGATION, ENGLISH]), "fineweb", "short_line_ratio"),
    ],
)  # fmt: skip
def test_each_filter_drops_with_its_reason(text, step, reason):
    assert verdict(text)[:2] == (step, reason)


def test_bundled_chapters_of_law_liturgy_and_names_are_kept_with_the_default_thresholds():
    """Numbers 29 (verses repeat), Psalm 136 (a refrain), 1 Chronicles 1 (a list of names), Psalm 117 (KJV, 2
    verses): the chapters Gopher's and FineWeb's own defaults drop; params.yaml's thresholds keep them."""
    rows = read_raw(ROOT / "data/raw/kjv.jsonl.gz")
    for book, chapter in [("Num", 29), ("Ps", 136), ("1Chr", 1), ("Ps", 117)]:
        text = "\n".join(r["text"] for r in rows if (r["book"], r["chapter"]) == (book, chapter))
        assert verdict(text)[:2] == (None, None), (book, chapter)


def test_formatters_repair_encoding_strip_markup_and_mask_pii():
    _, _, text = verdict(
        "God\u00e2\u20ac\u2122s <note>a footnote</note>Spirit<w lemma='x'> hovered</w> &amp; rested.\n" + ENGLISH
        + "\nWrite to john.doe@gmail.com or visit 81.2.69.160 for the newsletter."
    )  # fmt: skip
    assert text.startswith("God’s Spirit hovered & rested.\n")
    assert "john.doe@gmail.com" not in text and "81.2.69.160" not in text
    assert "@example." in text


def test_markup_leftovers_are_removed_without_gluing_words():
    assert strip_markup("God<note>a footnote</note>created <w lemma='x'>the</w> earth &amp; sky").split() == [
        "God", "created", "the", "earth", "&", "sky"
    ]  # fmt: skip
    assert normalize_whitespace("  a  b \n\n c \t") == "a b\nc"


def chapter(rows: list[dict], book: str, n: int) -> str:
    return "\n".join(r["text"] for r in rows if (r["book"], r["chapter"]) == (book, n))


def dedup_docs() -> list[dict]:
    """Genesis 1 (WEB) four ways, Genesis 2, Genesis 1 in KJV and in Spanish: one document per dedup outcome."""
    web, kjv, sparv = (read_raw(ROOT / f"data/raw/{t}.jsonl.gz") for t in ("web", "kjv", "sparv"))
    gen1 = chapter(web, "Gen", 1)
    edited = gen1.replace("God saw", "God looked at", 1).replace("evening", "dusk", 1).replace("the sky", "sky", 1)
    texts = {
        "web/Gen.1": gen1,
        "web/Gen.1+spaces": gen1.replace(" ", "  ").replace("\n", " \n\n"),  # the same after normalisation
        "web/Gen.1+edits": edited,  # three small edits: not exact, near
        "web/Gen.2": chapter(web, "Gen", 2),
        "kjv/Gen.1": chapter(kjv, "Gen", 1),  # another translation: not a near-duplicate
        "sparv/Gen.1": chapter(sparv, "Gen", 1),
    }
    return [{"id": k, "text": v} for k, v in texts.items()]


@pytest.fixture(scope="module")
def dedup_corpus() -> list[dict]:
    return dedup_docs()


def clean_corpus(docs: list[dict], tmp: Path, p: CleanParams = P) -> tuple[dict, Path]:
    Dataset.from_list(docs).save_to_disk(tmp / IN)
    return run(p, tmp / IN, tmp / OUT, tmp / METRICS), tmp / OUT


def test_exact_dedup_catches_the_copy_and_minhash_the_edited_copy_but_not_the_other_translation(
    dedup_corpus, tmp_path
):
    metrics, out = clean_corpus(dedup_corpus, tmp_path)
    assert load_from_disk(str(out / "corpus"))["id"] == ["web/Gen.1", "web/Gen.2", "kjv/Gen.1"]
    assert metrics["drops_per_step"] == {
        "exact_dedup": {"exact_duplicate": 1},
        "language": {"not_english": 1},
        "minhash": {"near_duplicate": 1},
    }
    dropped = [yaml.safe_load(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert {(d["id"], d["reason"]) for d in dropped} == {
        ("web/Gen.1+spaces", "exact_duplicate"), ("web/Gen.1+edits", "near_duplicate"), ("sparv/Gen.1", "not_english")
    }  # fmt: skip
    assert metrics["documents_in"] == 6 and metrics["documents_out"] == 3
    assert 0 < metrics["bytes_out"] < metrics["bytes_in"]
    assert sorted(p.name for p in tmp_path.glob("data/*")) == ["1_ingest", "2_clean"]  # the work dir is gone


def test_several_tasks_and_workers_give_byte_identical_output(dedup_corpus, tmp_path):
    """tasks=3, workers=2 shard the corpus and run in parallel: the same documents kept, the same bytes written."""
    docs = dedup_corpus + [{"id": f"{d['id']}#2", "text": d["text"]} for d in dedup_corpus]  # duplicates across shards
    one = clean_corpus(docs, tmp_path / "one")[1]
    many = clean_corpus(docs, tmp_path / "many", dataclasses.replace(P, tasks=3, workers=2))[1]
    assert load_from_disk(str(one / "corpus"))["id"] == ["web/Gen.1", "web/Gen.2", "kjv/Gen.1"]
    files = sorted(f.relative_to(one) for f in one.rglob("*") if f.is_file() and f.name != "meta.json")
    assert [(f, (one / f).read_bytes() == (many / f).read_bytes()) for f in files] == [(f, True) for f in files]


def test_pipelines_list_the_dedup_stages_that_params_enable(tmp_path):
    names = [name for name, _, _ in pipelines(P, tmp_path / "in", tmp_path / "work")]
    assert names == ["filter", "exact_signatures", "exact_find", "minhash_signatures", "minhash_buckets",
                     "minhash_cluster", "kept"]  # fmt: skip
    off = dataclasses.replace(P, exact_dedup=False, minhash=dataclasses.replace(P.minhash, enabled=False))
    assert [name for name, _, _ in pipelines(off, tmp_path / "in", tmp_path / "work")] == ["kept"]
    assert [name for name, _ in steps(P, tmp_path)] == ["ftfy", "markup", "pii", "empty", "language", "c4",
                                                       "gopher_repetition", "gopher_quality", "fineweb"]  # fmt: skip


def test_slurm_executor_is_built_from_params(tmp_path):
    """Built, never run: no cluster here. One array job per pipeline, chained by `depends`."""
    p = dataclasses.replace(P, executor="slurm", tasks=8)
    name, pipeline, tasks = pipelines(p, tmp_path / "in", tmp_path / "work")[0]
    ex = executor(p, name, pipeline, tasks, tmp_path / "logs")
    assert (ex.tasks, ex.partition, ex.time, ex.job_name) == (8, P.slurm.partition, P.slurm.time, "clean_filter")


def test_ray_executor_is_built_from_params(tmp_path, capsys):
    """Built, never run (datatrove builds it without `ray` installed); without `ray` the run fails naming the key."""
    p = dataclasses.replace(P, executor="ray", tasks=4, workers=2)
    name, pipeline, tasks = pipelines(p, tmp_path / "in", tmp_path / "work")[0]
    ex = executor(p, name, pipeline, tasks, tmp_path / "logs")
    assert (ex.tasks, ex.workers, ex.cpus_per_task) == (4, 2, P.ray.cpus_per_task)
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(SystemExit):
            run_datatrove(p, tmp_path / "in", tmp_path / "work")
        assert "clean.executor: ray, but the `ray` package is not installed" in capsys.readouterr().err
        assert not (tmp_path / "work").exists()  # failed before any pipeline ran


def test_a_corpus_emptied_by_cleaning_fails_clearly_and_keeps_the_previous_output(tmp_path):
    """`python -m stages.clean` with filters that drop every document: exit 1 with one paragraph naming the input,
    the drops per reason and the keys to loosen; the previous output and metrics are left byte for byte."""
    docs = [ENGLISH, "God said, let there be light.", "And God saw the light, and it was good.", SPANISH]
    Dataset.from_list([{"id": str(i), "text": t} for i, t in enumerate(docs)]).save_to_disk(tmp_path / IN)
    run(P, tmp_path / IN, tmp_path / OUT, tmp_path / METRICS)  # the previous, successful run keeps ENGLISH
    before = {f: f.read_bytes() for f in [*(tmp_path / OUT).rglob("*"), tmp_path / METRICS] if f.is_file()}
    write_params(tmp_path, tiny_params({"clean.gopher_quality.max_doc_words": 40}))  # ENGLISH's 61 words: all dropped

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stages.clean"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip().splitlines()[-1]  # datatrove logs to stderr before it
    assert message.startswith(f"error: {IN}: cleaning dropped all 4 documents")
    assert "(too_few_sentences: 2, gopher_long_doc: 1, not_english: 1)" in message
    for key in ("clean.c4.min_num_sentences", "clean.gopher_quality.max_doc_words", "clean.language."):
        assert key in message
    assert "clean.exact_dedup" not in message and "clean.minhash" not in message  # no reason to loosen those
    assert "Traceback" not in done.stderr
    after = {f: f.read_bytes() for f in [*(tmp_path / OUT).rglob("*"), tmp_path / METRICS] if f.is_file()}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["1_ingest", "2_clean"]  # no temp folder left


def test_nothing_kept_message_names_no_key_where_params_cannot_help():
    empty = nothing_kept_message(IN, OUT, Counter({"empty": 2}))
    assert "nothing in params.yaml keeps them" in empty and "no text left after normalisation" in empty
    assert "holds no documents" in nothing_kept_message(IN, OUT, Counter())
    assert "clean.gopher_repetition" in nothing_kept_message(IN, OUT, Counter({"duplicated_5_n_grams": 1}))


def test_a_mistyped_or_unknown_clean_key_fails_naming_it(tmp_path):
    from stages.common import ParamsError

    params = tiny_params()
    params["clean"]["gopher_quality"] = {"min_doc_word": 20}  # laid over the preset's gopher_quality: a typo
    write_params(tmp_path, params)
    with pytest.raises(ParamsError, match=r"clean\.gopher_quality: unknown key\(s\) min_doc_word"):
        load_params("clean", CleanParams, tmp_path / "params.yaml")
    write_params(tmp_path, tiny_params({"clean.executor": "kubernetes"}))
    with pytest.raises(ParamsError, match="executor: one of local, slurm, ray"):
        load_params("clean", CleanParams, tmp_path / "params.yaml")
