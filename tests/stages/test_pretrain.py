"""pretrain: the schedule, the seeded data order, and a kill -9 resume that ends with the same weights."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from stages.ingest import read_raw
from stages.tokenize import pack, train_tokenizer
from stages.training import batch_indices, warmup_cosine

ROOT = Path(__file__).resolve().parents[2]


def test_warmup_cosine_textbook_values():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.1)


def test_batches_are_a_function_of_seed_and_step():
    epoch = [i for step in range(5) for i in batch_indices(50, 10, step, seed=3)]
    assert sorted(epoch) == list(range(50))  # one epoch sees every example once
    assert batch_indices(50, 10, 7, seed=3) == batch_indices(50, 10, 7, seed=3) != batch_indices(50, 10, 7, seed=4)


@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    texts = [r["text"] for r in read_raw(ROOT / "data/raw/web.jsonl.gz")[:1500]]
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=2)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    blocks = pack(ids, 16, tok.eos_token_id)
    DatasetDict(
        {
            "train": Dataset.from_dict({"input_ids": blocks[20:]}),
            "validation": Dataset.from_dict({"input_ids": blocks[:20]}),
        }
    ).save_to_disk(root / "blocks")
    tok.save_pretrained(root / "tokenizer")
    return root


DRIVER = textwrap.dedent(
    """
    import dataclasses, sys
    from pathlib import Path
    from stages.common import load_params
    from stages.pretrain import PretrainParams, run
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    p = dataclasses.replace(load_params("pretrain", PretrainParams), n_layer=2, n_embd=32, n_head=2, dropout=0.1,
        max_steps=150, warmup_steps=5, batch_size=4, eval_every=50, eval_batches=1, checkpoint_every=5)
    run(p, blocks=root / "blocks", tokenizer_dir=root / "tokenizer", out=out / "model", metrics_path=out / "m.json",
        curve_path=out / "c.csv", ckpt=out / "ckpt")
    """
)


def start(blocks_dir, out):
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(blocks_dir), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_killed_run_resumes_to_identical_weights(blocks_dir, tmp_path):
    straight = start(blocks_dir, tmp_path / "straight")
    assert straight.wait() == 0, straight.stdout.read()

    killed = start(blocks_dir, tmp_path / "killed")
    deadline = time.time() + 120
    while not (tmp_path / "killed/ckpt/checkpoint.json").exists():
        assert killed.poll() is None and time.time() < deadline, "finished before a checkpoint could be killed"
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed/model").exists()  # nothing half-written was left as the output

    resumed = start(blocks_dir, tmp_path / "killed")
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log
    assert "resuming at step" in log
    a = (tmp_path / "straight/model/model.safetensors").read_bytes()
    b = (tmp_path / "killed/model/model.safetensors").read_bytes()
    assert a == b, "resumed run ended with different weights"
    assert not (tmp_path / "killed/ckpt").exists()  # the checkpoint is removed once the output is written
