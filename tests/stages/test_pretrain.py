"""pretrain: the schedules, Muon, the seeded data order and masks, both objectives end to end, and a kill -9 resume
that ends with the same weights (AdamW with a cosine, Muon with warmup-stable-decay)."""

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from stages.ingest import read_raw
from stages.pretrain import LinearCrossEntropy, Masking, blocks_at, mask_tokens, token_loss
from stages.tokenize import pack, train_tokenizer
from stages.training import Muon, batch_indices, newton_schulz, warmup_cosine, warmup_stable_decay

ROOT = Path(__file__).resolve().parents[2]


def test_warmup_cosine_textbook_values():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.1)


def test_warmup_stable_decay_textbook_values():
    assert warmup_stable_decay(0, 10, 100, 0.2) == pytest.approx(0.1)  # warmup: (step + 1) / 10
    assert warmup_stable_decay(9, 10, 100, 0.2) == pytest.approx(1.0)
    assert warmup_stable_decay(50, 10, 100, 0.2) == warmup_stable_decay(80, 10, 100, 0.2) == 1.0  # flat to step 80
    assert warmup_stable_decay(90, 10, 100, 0.2) == pytest.approx(0.55)  # halfway down the line: (1 + 0.1) / 2
    assert warmup_stable_decay(100, 10, 100, 0.2) == pytest.approx(0.1)
    assert warmup_stable_decay(100, 10, 100, 0.2, min_ratio=0.0) == 0.0
    assert warmup_stable_decay(10, 10, 100, 1.0) == pytest.approx(1.0)  # decay_fraction 1: from the end of warmup
    assert warmup_stable_decay(55, 10, 100, 1.0) == pytest.approx(0.55)


@pytest.mark.parametrize("shape", [(64, 192), (192, 64)])
def test_newton_schulz_orthogonalises(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) * torch.logspace(-2, 0, shape[1])  # columns scaled over two decades
    s = torch.linalg.svdvals(newton_schulz(g))
    assert newton_schulz(g).shape == shape and s.min() > 0.6 and s.max() < 1.25  # ~1, whatever g's spread
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 10


def test_muon_step_is_orthogonal_and_adamw_steps_as_torchs():
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(32, 96)), torch.nn.Parameter(torch.randn(96))  # (in, out) as GPT-2's Conv1D
    ref = torch.nn.Parameter(b.detach().clone())
    opt = Muon([{"params": [w], "muon": True, "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.1}], lr=0.01)
    torch_adamw = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    for _ in range(3):
        before = w.detach().clone()
        w.grad, b.grad = torch.randn(32, 96), torch.randn(96)
        ref.grad = b.grad.clone()
        opt.step()
        torch_adamw.step()
        update = (before * (1 - 0.01 * 0.1) - w.detach()) / (0.01 * 0.2 * 96**0.5)  # decay, then lr x RMS scale
        s = torch.linalg.svdvals(update)
        assert s.min() > 0.6 and s.max() < 1.25  # the update is (nearly) orthogonal, whatever the gradient
        assert torch.allclose(b, ref, atol=1e-6)  # the rest is AdamW
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [b], "muon": True}], lr=0.01)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("optimizer", "sgd", "pretrain.optimizer: expected adamw or muon"),
    ("schedule", "linear", "pretrain.schedule: expected cosine or wsd"),
    ("decay_fraction", 0.0, r"pretrain.decay_fraction: must be in \(0, 1\]"),
])  # fmt: skip
def test_recipe_params_fail_naming_the_key(tmp_path, key, value, message):
    import yaml

    from stages.common import ParamsError, load_params
    from stages.pretrain import PretrainParams

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pretrain"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        load_params("pretrain", PretrainParams, tmp_path / "params.yaml")


def test_batches_are_a_function_of_seed_and_step():
    epoch = [i for step in range(5) for i in batch_indices(50, 10, step, seed=3)]
    assert sorted(epoch) == list(range(50))  # one epoch sees every example once
    assert batch_indices(50, 10, 7, seed=3) == batch_indices(50, 10, 7, seed=3) != batch_indices(50, 10, 7, seed=4)


def test_masking_is_berts_80_10_10_and_a_function_of_the_seed():
    m = Masking(mask_id=2, vocab_size=1000, special_ids=(0, 1, 2), probability=0.15, seed=0)
    x = torch.randint(3, 1000, (64, 256))  # (B, T) ordinary tokens ...
    x[:, ::16] = 0  # ... and an EOS every 16
    inputs, labels = mask_tokens(x, m, torch.Generator().manual_seed(7))
    chosen = labels != -100
    assert (labels[chosen] == x[chosen]).all() and not chosen[x == 0].any()  # originals are the targets; EOS never
    assert chosen.float().mean().item() == pytest.approx(0.15 * 15 / 16, abs=0.01)
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == 2).sum().item() / n
    kept = (inputs[chosen] == x[chosen]).sum().item() / n  # left as it is (or a random draw of the same token)
    assert as_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1, abs=0.02)
    assert (inputs[~chosen] == x[~chosen]).all()  # nothing else changes
    again = mask_tokens(x, m, torch.Generator().manual_seed(7))
    other = mask_tokens(x, m, torch.Generator().manual_seed(8))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels) and not torch.equal(other[1], labels)


def test_batches_read_from_the_arrow_files_are_the_in_memory_ones(tmp_path):
    blocks = torch.randint(0, 300, (50, 16))  # (N, T)
    Dataset.from_dict({"input_ids": blocks.tolist(), "other": list(range(50))}).save_to_disk(tmp_path / "b")
    mapped = Dataset.load_from_disk(tmp_path / "b").select_columns(["input_ids"]).with_format("torch")
    for step in range(8):
        indices = batch_indices(50, 8, step, seed=1)
        assert torch.equal(blocks_at(mapped, indices), blocks_at(blocks, indices))
        assert blocks_at(mapped, indices).dtype == torch.long


@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_matches_logits_then_cross_entropy(monkeypatch, bias):
    monkeypatch.setattr("stages.pretrain.HEAD_ROWS", 16)  # 50 rows: three full chunks and a partial one
    torch.manual_seed(0)
    h, w, y = torch.randn(50, 8), torch.randn(40, 8), torch.randint(40, (50,))  # (N, C), (V, C), (N,)
    b = torch.randn(40) if bias else None
    grads = []
    for fused in (False, True):
        leaves = [t.clone().requires_grad_() for t in (h, w) + ((b,) if bias else ())]
        hh, ww, bb = (*leaves, None)[:3]
        if fused:
            loss = LinearCrossEntropy.apply(hh, ww, bb, y, True)
        else:
            loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hh, ww, bb), y, reduction="sum")
        (3 * loss).backward()  # an outer factor, as the loop's division by the token count
        grads.append([loss.detach()] + [t.grad for t in leaves])
    for ref, ours in zip(*grads, strict=True):
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # validation: the loss alone, no gradients computed
        assert LinearCrossEntropy.apply(h, w, b, y, False).item() == pytest.approx(grads[0][0].item(), rel=1e-6)


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_token_loss_of_the_fused_head_matches_the_models_logits(monkeypatch, objective):
    from bench.pretrain import Vocab
    from stages.common import load_params
    from stages.pretrain import PretrainParams, build_model, make_batch, masking_for

    p = dataclasses.replace(load_params("pretrain", PretrainParams), objective=objective, n_layer=1, n_embd=32,
                            n_head=2)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(p, Vocab(300), 16)
    masking = masking_for(objective, Vocab(300), 0.15, 0)
    inputs, labels = make_batch(torch.randint(3, 300, (4, 16)), masking, 0)
    fused = token_loss(model, inputs, labels, masking is None)
    monkeypatch.setattr("stages.pretrain.split_head", lambda model: None)  # the plain path through the logits
    plain = token_loss(model, inputs, labels, masking is None)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)


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
    root, out, objective, optimizer, schedule = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
    p = dataclasses.replace(load_params("pretrain", PretrainParams), objective=objective, n_layer=2,
        n_embd=32, n_head=2, dropout=0.1, max_steps=150, warmup_steps=5, batch_size=4, eval_every=50, eval_batches=1,
        checkpoint_every=5, optimizer=optimizer, schedule=schedule)
    run(p, blocks=root / "blocks", tokenizer_dir=root / "tokenizer", out=out / "model", metrics_path=out / "m.json",
        live_dir=out / "live", ckpt=out / "ckpt")
    """
)


def start(blocks_dir, out, objective, recipe):
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(blocks_dir), str(out), objective, *recipe], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.parametrize(("objective", "recipe"), [
    ("causal", ("adamw", "cosine")), ("masked", ("adamw", "cosine")), ("causal", ("muon", "wsd")),
], ids=["causal-adamw-cosine", "masked-adamw-cosine", "causal-muon-wsd"])  # fmt: skip
def test_killed_run_resumes_to_identical_weights(blocks_dir, tmp_path, objective, recipe):
    straight = start(blocks_dir, tmp_path / "straight", objective, recipe)
    assert straight.wait() == 0, straight.stdout.read()

    killed = start(blocks_dir, tmp_path / "killed", objective, recipe)
    deadline = time.time() + 120
    while not (tmp_path / "killed/ckpt/checkpoint.json").exists():
        assert killed.poll() is None and time.time() < deadline, "finished before a checkpoint could be killed"
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed/model").exists()  # nothing half-written was left as the output

    resumed = start(blocks_dir, tmp_path / "killed", objective, recipe)
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log
    assert "resuming at step" in log
    a = (tmp_path / "straight/model/model.safetensors").read_bytes()
    b = (tmp_path / "killed/model/model.safetensors").read_bytes()
    assert a == b, "resumed run ended with different weights"
    assert not (tmp_path / "killed/ckpt").exists()  # the checkpoint is removed once the output is written


def test_masked_objective_trains_a_bert_and_reports_its_pseudo_perplexity(blocks_dir, tmp_path):
    import json

    from transformers import AutoConfig

    from stages.common import load_params
    from stages.pretrain import PretrainParams, run

    p = dataclasses.replace(load_params("pretrain", PretrainParams), objective="masked", n_layer=1, n_embd=32,
                            n_head=2, max_steps=30, warmup_steps=2, batch_size=8, eval_every=10, eval_batches=2,
                            checkpoint_every=0)  # fmt: skip
    m = run(p, blocks=blocks_dir / "blocks", tokenizer_dir=blocks_dir / "tokenizer", out=tmp_path / "model",
            metrics_path=tmp_path / "m.json", live_dir=tmp_path / "live", ckpt=tmp_path / "ckpt")  # fmt: skip
    assert AutoConfig.from_pretrained(tmp_path / "model").architectures == ["BertForMaskedLM"]
    assert m["objective"] == "masked" and m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-3)
    train = [
        float(r.split("\t")[-1]) for r in (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    ]
    assert len(train) == 30 and sum(train[-5:]) < sum(train[:5])  # logged every step, and it learned
    assert m["train_loss"] == pytest.approx(sum(train[-10:]) / 10, abs=1e-4)  # the mean of the last eval_every steps
    val = (tmp_path / "live/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in val[1:]] == ["10", "20", "30"] and val[0].split("\t")[-1] == "loss"
    assert json.loads((tmp_path / "m.json").read_text()) == m

    # dvc.yaml's pretrain plot draws both curves from these files
    import yaml

    plots = [p for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] if "pretrain_loss" in p]
    repo = tmp_path / "repo"
    shutil.copytree(tmp_path / "live", repo / "metrics/pretrain_live")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    dvc = Path(sys.executable).parent / "dvc"
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    shown = subprocess.run([dvc, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    rows = json.loads(shown.stdout)["data"]["pretrain_loss"][0]["content"]["data"]["values"]
    assert {r["filename"] for r in rows} == {"train/loss.tsv", "val/loss.tsv"} and len(rows) == 30 + 3


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_validation_loss_reads_arrow_batches_and_its_masks_ignore_the_batch_size(tmp_path, objective):
    """lm_loss reads the validation split batch by batch from the memory-mapped Arrow files, as from a tensor; each
    validation block's mask has its own seed, so the loss is the same at any batch size."""
    from bench.pretrain import Vocab
    from stages.common import load_params
    from stages.pretrain import PretrainParams, build_model, lm_loss, masking_for

    p = dataclasses.replace(load_params("pretrain", PretrainParams), objective=objective, n_layer=1, n_embd=32,
                            n_head=2)  # fmt: skip
    torch.manual_seed(0)
    model, blocks = build_model(p, Vocab(300), 16), torch.randint(3, 300, (10, 16))
    Dataset.from_dict({"input_ids": blocks.tolist()}).save_to_disk(tmp_path / "val")
    mapped = Dataset.load_from_disk(tmp_path / "val").with_format("torch")
    masking, cpu = masking_for(objective, Vocab(300), 0.15, 0), torch.device("cpu")
    losses = [lm_loss(model, b, size, cpu, masking=masking) for b in (blocks, mapped) for size in (3, 4, 10)]
    assert losses == pytest.approx([losses[0]] * 6, rel=1e-5) and losses[0] > 0
    # the first batches only, as validation during training reads them: rows 0..3 of 10
    assert lm_loss(model, mapped, 4, cpu, 1, masking) == pytest.approx(
        lm_loss(model, blocks[:4], 4, cpu, None, masking)
    )
