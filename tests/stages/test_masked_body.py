"""A masked-LM (BERT) pre-trained body downstream: finetune loads it (pooling first or mean) and study measures
forgetting on its own objective, the masked-token loss."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from stages.common import load_params
from stages.finetune import RunParams, TrainParams, build_classifier, load_body
from stages.pretrain import PretrainParams, run
from stages.study import perplexity
from stages.training import pad_batch
from tests.conftest import VERSES, write_tiny_blocks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """(folder of a tiny masked LM pre-trained by stages.pretrain.run, its metrics, its tokenizer, val blocks)."""
    root = tmp_path_factory.mktemp("masked")
    tok = write_tiny_blocks(root, verses=800, block_size=32, validation=20)
    p = dataclasses.replace(load_params("pretrain", PretrainParams, ROOT / "params.yaml"), objective="masked",
                            n_layer=1, n_embd=32, n_head=2, max_steps=10, warmup_steps=2, batch_size=8, eval_every=10,
                            eval_batches=1, checkpoint_every=0)  # fmt: skip
    metrics = run(p, blocks=root / "blocks", tokenizer_dir=root / "tokenizer", out=root / "model",
                  metrics_path=root / "m.json", live_dir=root / "live", ckpt=root / "ckpt")  # fmt: skip
    val = load_from_disk(str(root / "blocks"))["validation"]["input_ids"]
    return root / "model", metrics, tok, torch.tensor(val)


def train_params(pooling: str) -> TrainParams:
    return dataclasses.replace(load_params("finetune.train", TrainParams, ROOT / "params.yaml"), pooling=pooling)


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_finetune_builds_on_the_masked_body_and_learns(masked, pooling):
    model_dir, _, tok, _ = masked
    full = RunParams(init="pretrained", method="full", lr_scale=0.1, augmented=False)
    torch.manual_seed(0)
    clf = build_classifier(full, model_dir, len(VERSES), train_params(pooling))
    saved = load_body(model_dir)
    assert type(clf.body).__name__ == "BertModel"
    assert torch.equal(clf.body.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    assert clf.body.config.hidden_dropout_prob == train_params(pooling).dropout  # finetune.train.dropout reaches BERT
    scratch = build_classifier(
        dataclasses.replace(full, init="scratch"), model_dir, len(VERSES), train_params(pooling)
    )
    assert not torch.equal(scratch.body.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)

    ids, mask = pad_batch([tok.encode(v)[:32] for v in VERSES.values()], tok.pad_token_id)  # (7, T)
    labels = torch.tensor(list(VERSES))
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = clf(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2


def test_first_pooling_reads_the_first_position(masked):
    model_dir, _, tok, _ = masked
    run_ = RunParams(init="pretrained", method="full", lr_scale=0.1, augmented=False)
    clf = build_classifier(run_, model_dir, 7, train_params("first")).eval()
    ids, mask = pad_batch([tok.encode(v)[:32] for v in list(VERSES.values())[:3]], tok.pad_token_id)
    h = clf.body(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    assert torch.allclose(clf(input_ids=ids, attention_mask=mask).logits, clf.head(h[:, 0]), atol=1e-6)


def test_forgetting_perplexity_of_a_masked_body_is_its_masked_lm_loss(masked):
    """study's perplexity of the untouched body = exp(pre-training's own validation loss), at any batch size."""
    model_dir, metrics, _, val_blocks = masked
    assert perplexity(load_body(model_dir), model_dir, val_blocks, batch_size=3) == pytest.approx(
        math.exp(metrics["val_loss"]), rel=1e-3
    )
    assert math.isclose(metrics["val_perplexity"], math.exp(metrics["val_loss"]), rel_tol=1e-3)
