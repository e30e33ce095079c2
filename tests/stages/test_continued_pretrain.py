"""Continued pre-training: tokenize reuses a checkpoint's tokenizer, pretrain starts from its weights (a tiny GPT-2
and a tiny BERT built from configs and saved locally), and a missing hub name fails naming the key (offline)."""

import dataclasses
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file
from transformers import AutoTokenizer

import stages.pretrain
from stages.common import ParamsError, load_params
from stages.ingest import read_raw
from stages.pretrain import PretrainParams, lm_loss, masking_for
from stages.tokenize import TokenizeParams, split_documents, train_tokenizer
from stages.tokenize import run as tokenize_run

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [r["text"] for r in read_raw(ROOT / "data/raw/web.jsonl.gz")[:600]]


def gpt2_checkpoint(folder: Path) -> Path:
    """A 1-layer GPT-2 and a byte-level BPE that has, like GPT-2's own, no pad token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train_tokenizer(TEXTS, vocab_size=300, min_frequency=2)
    tok.pad_token = None
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        folder
    )
    tok.save_pretrained(folder)
    return folder


def bert_checkpoint(folder: Path) -> Path:
    """A 1-layer BERT masked LM and a WordPiece tokenizer ([CLS] [SEP] [MASK] [PAD], no end-of-text token)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    words = sorted({w for t in TEXTS for w in t.lower().replace(",", " ").replace(".", " ").split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for t in TEXTS for c in t.lower()} - {" "})
    pieces = list(dict.fromkeys(specials + chars + [f"##{c}" for c in chars] + words[:400]))
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(pieces)})
    assert tok.unk_token_id not in tok.encode(TEXTS[0], add_special_tokens=False)
    torch.manual_seed(2)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


DOCS = ["\n".join(TEXTS[i : i + 30]) for i in range(0, len(TEXTS), 30)]


def tokenize(ckpt: str, tmp: Path) -> TokenizeParams:
    docs = DOCS
    Dataset.from_dict({"text": docs}).save_to_disk(tmp / "corpus")
    task = Dataset.from_dict({"text": TEXTS[:7], "label": list(range(7))})
    DatasetDict({"train": task}).save_to_disk(tmp / "task")
    p = dataclasses.replace(load_params("tokenize", TokenizeParams, ROOT / "params.yaml"), tokenizer=ckpt,
                            block_size=32, max_length=16, val_fraction=0.2)  # fmt: skip
    tokenize_run(p, tmp / "corpus", tmp / "task", tmp / "tok", tmp / "tokenize.json")
    return p


@pytest.mark.parametrize(("objective", "make"), [("causal", gpt2_checkpoint), ("masked", bert_checkpoint)])
def test_continued_pretraining_reuses_the_checkpoints_tokenizer_and_weights(objective, make, tmp_path, monkeypatch):
    ckpt = make(tmp_path / "ckpt")
    own = AutoTokenizer.from_pretrained(ckpt)
    tp = tokenize(str(ckpt), tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok" / "tokenizer")
    assert saved.get_vocab() == own.get_vocab()  # the checkpoint's tokenizer, not a new BPE
    sep = own.eos_token_id if objective == "causal" else own.sep_token_id  # BERT's documents end with [SEP]
    blocks = load_from_disk(str(tmp_path / "tok" / "blocks"))
    train_ids = [t for b in blocks["train"]["input_ids"] for t in b]
    train_idx, _ = split_documents(len(DOCS), tp.val_fraction, tp.seed)
    stream = [t for i in train_idx for t in (*own.encode(DOCS[i], add_special_tokens=False), sep)]
    assert len(train_ids) > 100 and train_ids == stream[: len(train_ids)]  # the checkpoint's ids, documents separated

    at_start = {}
    real_train = stages.pretrain.train

    def spy(p, model, *args):  # the model as the loop receives it, before step 1
        at_start.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(p, model, *args)

    monkeypatch.setattr(stages.pretrain, "train", spy)
    p = dataclasses.replace(load_params("pretrain", PretrainParams, ROOT / "params.yaml"), objective=objective,
                            init=str(ckpt), n_layer=3, n_embd=64, max_steps=25, warmup_steps=2, batch_size=8,
                            eval_every=25, eval_batches=2, checkpoint_every=0, lr=3e-3)  # fmt: skip
    metrics = stages.pretrain.run(p, blocks=tmp_path / "tok" / "blocks", tokenizer_dir=tmp_path / "tok" / "tokenizer",
                                  out=tmp_path / "out", metrics_path=tmp_path / "m.json", live_dir=tmp_path / "live",
                                  ckpt=tmp_path / "c")  # fmt: skip
    weights = load_file(str(ckpt / "model.safetensors"))
    assert weights and all(torch.equal(at_start[k], v) for k, v in weights.items())  # loaded, not re-initialised
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    assert AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 1  # the checkpoint's, not n_layer 3
    auto = AutoModelForCausalLM if objective == "causal" else AutoModelForMaskedLM
    val = torch.tensor(blocks["validation"]["input_ids"])
    masking = masking_for(objective, saved, p.mlm_probability, p.seed)
    before = lm_loss(auto.from_pretrained(ckpt), val, 8, torch.device("cpu"), masking=masking)
    assert metrics["val_loss"] < before - 0.5  # same validation masks, the checkpoint's loss went down


def test_a_checkpoint_other_than_tokenizes_fails_naming_the_key(tmp_path):
    ckpt = gpt2_checkpoint(tmp_path / "ckpt")
    tokenize("train", tmp_path)  # a freshly trained BPE, not the checkpoint's
    p = dataclasses.replace(load_params("pretrain", PretrainParams, ROOT / "params.yaml"), init=str(ckpt), max_steps=1)
    with pytest.raises(ParamsError, match=r"pretrain.init: .* tokenize.tokenizer"):
        stages.pretrain.run(p, blocks=tmp_path / "tok" / "blocks", tokenizer_dir=tmp_path / "tok" / "tokenizer",
                            out=tmp_path / "out", metrics_path=tmp_path / "m.json", live_dir=tmp_path / "live",
                            ckpt=tmp_path / "c")  # fmt: skip


def test_missing_hub_names_and_folders_fail_naming_the_key(tmp_path):
    with pytest.raises(ParamsError, match=r"tokenize.tokenizer: cannot load 'no-such-org/no-such-model'.*offline"):
        tokenize("no-such-org/no-such-model", tmp_path)
    p = dataclasses.replace(load_params("pretrain", PretrainParams, ROOT / "params.yaml"), init="no-such-model-xyz")
    tok = train_tokenizer(TEXTS[:50], vocab_size=300, min_frequency=2)
    with pytest.raises(ParamsError, match=r"pretrain.init: cannot load 'no-such-model-xyz'.*offline"):
        stages.pretrain.load_model(p, tok, 32)
    with pytest.raises(ParamsError, match=r"pretrain.init: \./nowhere: no such folder"):
        stages.pretrain.load_model(dataclasses.replace(p, init="./nowhere"), tok, 32)


def test_an_objective_the_checkpoint_was_not_trained_with_fails_naming_the_key(tmp_path):
    tok = train_tokenizer(TEXTS[:50], vocab_size=300, min_frequency=2)
    p = load_params("pretrain", PretrainParams, ROOT / "params.yaml")
    gpt2, bert = gpt2_checkpoint(tmp_path / "gpt2"), bert_checkpoint(tmp_path / "bert")
    with pytest.raises(ParamsError, match=r"pretrain.objective: masked does not fit .*GPT2LMHeadModel"):
        stages.pretrain.load_model(dataclasses.replace(p, objective="masked", init=str(gpt2)), tok, 32)
    with pytest.raises(ParamsError, match=r"pretrain.objective: causal does not fit .*BertForMaskedLM"):
        stages.pretrain.load_model(dataclasses.replace(p, objective="causal", init=str(bert)), tok, 32)


@pytest.mark.parametrize(("stage", "key"), [("tokenize", "tokenizer"), ("pretrain", "init")])
def test_a_local_checkpoint_outside_the_stages_deps_is_refused_naming_the_key(
    stage, key, tmp_path, monkeypatch, capsys
):
    """DVC reruns a stage only when a dep changes: a checkpoint folder it does not declare is refused before any work,
    and one under a declared dep passes the check (it then fails later here, on the missing corpus: not this one)."""
    import importlib

    import yaml

    module = importlib.import_module(f"stages.{stage}")
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tokenize"]["tokenizer"] = params["pretrain"]["init"] = "models/base"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models/base").mkdir(parents=True)
    dvc = {"stages": {stage: {"cmd": f"python -m stages.{stage}", "deps": [f"stages/{stage}.py"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    with pytest.raises(SystemExit):
        module.main([])
    err = capsys.readouterr().err
    assert f"{stage}.{key}: the local" in err and f"models/base is not a dependency of the {stage} stage" in err

    dvc["stages"][stage]["deps"].append("models")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    with pytest.raises((SystemExit, OSError, ValueError)):
        module.main([])
    assert "is not a dependency" not in capsys.readouterr().err
