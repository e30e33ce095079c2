"""predict: every input format gives the same rows as the library; bad input stops with one line; long texts are cut
and counted."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from specialist.classifier import SpecialistForSequenceClassification, specialist_config
from specialist.predict import predict
from stages import predict as cli
from stages.ingest import LABELS
from stages.tokenize import train_tokenizer
from tests.conftest import VERSES

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [VERSES[4], VERSES[6], "wisdom is better than gold", VERSES[0]]


def save_tiny_model(path: Path, positions: int = 64) -> Path:
    """A 1-layer GPT-2 classifier (mean_last, random head) with a BPE over the verses, model_max_length = positions."""
    tok = train_tokenizer(list(VERSES.values()) * 10, vocab_size=300, min_frequency=1)
    tok.model_max_length = positions
    torch.manual_seed(0)
    body = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=16, n_layer=1, n_head=2,
                      pad_token_id=tok.pad_token_id)  # fmt: skip
    model = SpecialistForSequenceClassification(specialist_config(body, LABELS, "mean_last"))
    torch.nn.init.normal_(model.head.weight, std=1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("predict") / "model")


def write_inputs(d: Path) -> dict[str, Path]:
    """The same four texts as .txt, .csv (with Excel's byte-order mark), .jsonl.gz and .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {"txt": d / "in.txt", "csv": d / "in.csv", "jsonl": d / "in.jsonl.gz", "parquet": d / "in.parquet"}
    files["txt"].write_text("\n".join(TEXTS) + "\n\n")  # a trailing blank line is skipped
    rows = "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS))
    files["csv"].write_bytes(("\ufeffid,verse\n" + rows).encode())
    with gzip.open(files["jsonl"], "wt") as f:
        f.writelines(json.dumps({"verse": t}) + "\n" for t in TEXTS)
    pq.write_table(pa.table({"verse": TEXTS}), files["parquet"])
    return files


def test_every_format_gives_the_rows_the_library_gives(model, tmp_path, capsys):
    expected = predict(TEXTS, model)
    files = write_inputs(tmp_path)
    for kind, path in files.items():
        out = tmp_path / f"out_{kind}.jsonl"
        counts = cli.main([str(path), "--model", str(model), "--out", str(out), "--batch-size", "3",
                           *([] if kind == "txt" else ["--column", "verse"])])  # fmt: skip
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["label"] for r in rows] == [e["label"] for e in expected], kind
        for r, e in zip(rows, expected, strict=True):  # other batches: float sums in another order
            assert r["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5) and r["model"] == e["model"]
        assert counts["texts"] == 4 and counts["truncated"] == 0
    cli.main([str(files["csv"]), "--model", str(model), "--column", "verse", "--out", str(tmp_path / "o.csv")])
    header, *rows = (tmp_path / "o.csv").read_text().splitlines()
    assert header == "label," + ",".join(f"p_{n}" for n in LABELS) + ",truncated,model"
    assert [r.split(",")[0] for r in rows] == [e["label"] for e in expected]


def test_labels_are_the_argmax_of_the_models_logits_one_text_at_a_time(model):
    """Batching by length (and padding) changes no label: the same rule as the pipeline's evaluation."""
    from specialist.classifier import load

    m, tok = load(model)
    rows = predict(TEXTS * 5, model, batch_size=4)
    with torch.no_grad():
        logits = [m(**tok([t], return_tensors="pt")).logits[0] for t in TEXTS * 5]
    assert [r["label"] for r in rows] == [LABELS[int(x.argmax())] for x in logits]
    probs = torch.tensor([[r["probabilities"][n] for n in LABELS] for r in rows])
    torch.testing.assert_close(probs, torch.stack(logits).softmax(-1), atol=1e-5, rtol=0)
    assert rows[0]["model"] == str(model)


def test_a_text_longer_than_the_model_takes_is_truncated_and_counted(model, tmp_path, capsys):
    long = " ".join([VERSES[3]] * 10)  # far more than the model's 64 positions
    (tmp_path / "in.txt").write_text(f"{VERSES[4]}\n{long}\n")
    counts = cli.main([str(tmp_path / "in.txt"), "--model", str(model), "--out", str(tmp_path / "o.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [False, True] and counts["truncated"] == 1
    assert "1 of 2 texts were longer than the model's 64 tokens and were truncated" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, args, message",
    [
        ("missing.txt", None, [], "missing.txt: no such file"),
        ("empty.txt", b"\n\n", [], "empty.txt: no texts to classify (an empty file)"),
        ("a.csv", b"id,review\n1,good\n", [], "a.csv: no column 'text' (--column); it has 'id', 'review'"),
        ("a.jsonl", b'{"review": "good"}\n', [], "a.jsonl:1: no column 'text' (--column); it has 'review'"),
        ("latin.txt", "ok\ncaf\u00e9\n".encode("latin-1"), [], "latin.txt:2 is not utf-8"),
        ("blank.csv", b"text\ngood\n\"\"\n", [], "blank.csv:3: empty text in column 'text'"),
        ("a.docx", b"x", [], "a.docx: cannot tell the format from its suffix"),
    ],
)  # fmt: skip
def test_bad_input_stops_with_one_line_naming_the_file(model, tmp_path, capsys, name, content, args, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as e:
        cli.main([str(tmp_path / name), "--model", str(model), *args])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_stdin_and_help_in_a_fresh_process(model):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "stages.predict", "-", "--model", str(model)], cwd=ROOT, env=env,
                          input="\n".join(TEXTS), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [r["label"] for r in predict(TEXTS, model)]
    assert [json.loads(line)["label"] for line in done.stdout.splitlines()] == expected
    assert "\r" not in done.stderr  # no progress bar off a terminal
    helped = subprocess.run([sys.executable, "-m", "stages.predict", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert helped.returncode == 0 and "--column" in helped.stdout and "--model" in helped.stdout
