"""Fine-tuning methods on a tiny GPT-2: each trains exactly what it says, starts where it should, and round-trips."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from stages.common import ParamsError, from_dict, load_params
from stages.finetune import (
    RunParams,
    TrainParams,
    build_classifier,
    classifier_info,
    load_body,
    load_classifier,
    predict,
    save_classifier,
    train,
)
from stages.methods import METHODS
from stages.training import pad_batch

ROOT = Path(__file__).resolve().parents[2]
N_LAYER, PAD = 2, 1
KNOBS = {
    "full": None,
    "freeze": {"train_top_blocks": 1},
    "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["c_attn", "c_proj", "c_fc"]},
    "ia3": {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]},
    "prompt_tuning": {"num_virtual_tokens": 3, "init": "sample_vocab"},
    "prefix_tuning": {"num_virtual_tokens": 3},
    "adapter": {"bottleneck": 4},
}
KNOBS["qlora"] = {**KNOBS["lora"], "gradient_checkpointing": False}  # lora's, on a 4-bit body
# what each method trains, as a pattern over the classifier's parameter names (the head always trains)
TRAINS = {
    "full": r"body\..*",
    "freeze": rf"body\.h\.{N_LAYER - 1}\..*|body\.ln_f\..*",
    "lora": r".*\.lora_[AB]\..*",
    "ia3": r".*\.ia3_l\..*",
    "prompt_tuning": r"body\.prompt_encoder\..*",
    "prefix_tuning": r"body\.prompt_encoder\..*",
    "adapter": r"body\.h\.\d\.(attn|mlp)\.c_proj\.adapter\..*|body\.h\.\d\.ln_[12]\..*|body\.ln_f\..*",
    "qlora": r".*\.lora_[AB]\..*",  # on 4-bit matrices (tests/stages/test_qlora.py)
}


def run_params(method: str, **knobs) -> RunParams:
    data = {"init": "pretrained", "method": method, "lr_scale": 1.0, "augmented": False}
    if KNOBS[method] is not None:
        data[method] = {**KNOBS[method], **knobs}
    return from_dict(RunParams, data, "finetune.runs.x")


def train_params(**kw) -> TrainParams:
    t = load_params("finetune.train", TrainParams, ROOT / "params.yaml")
    return dataclasses.replace(t, **{"epochs": 2, "patience": 2, "batch_size": 4, "eval_batch_size": 3, **kw})


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny pre-trained GPT-2 as the pretrain stage saves one (an LM head model; the body loads from it)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=N_LAYER, n_head=2, bos_token_id=0,
                     eos_token_id=0, pad_token_id=PAD)  # fmt: skip
    path = tmp_path_factory.mktemp("methods") / "pretrained"
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data():
    """16 sequences of 3-9 tokens and labels that depend on their first token, so a few steps learn something."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(2, 50, (int(n),), generator=g).tolist() for n in torch.randint(3, 10, (16,), generator=g)]
    return seqs, [s[0] % 3 for s in seqs]


def build(method: str, base: Path, seed: int = 0, **knobs):
    torch.manual_seed(seed)
    return build_classifier(run_params(method, **knobs), base, 3, train_params())


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list(METHODS))
def test_trains_exactly_the_intended_parameters(base, method):
    model = build(method, base)
    names = {n for n, _ in model.named_parameters()}
    intended = {n for n in names if n.startswith("head.") or re.fullmatch(TRAINS[method], n)}
    assert trainable_names(model) == intended
    assert any(n.startswith("body.") for n in intended)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_freeze_trains_the_top_k_blocks_ln_f_and_the_head(base, k):
    model = build("freeze", base, train_top_blocks=k)
    blocks = {int(n.split(".")[2]) for n in trainable_names(model) if n.startswith("body.h.")}
    assert blocks == set(range(N_LAYER - k, N_LAYER))
    assert {"body.ln_f.weight", "body.ln_f.bias", "head.weight", "head.bias"} <= trainable_names(model)
    assert not {"body.wte.weight", "body.wpe.weight"} & trainable_names(model)


@pytest.mark.parametrize("method", ["adapter", "lora", "ia3"])
def test_method_starts_as_the_base_model(base, method):
    """Adapters (up-projection at zero), LoRA (B at zero) and IA3 (scales at one) leave the body's output as it was."""
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], PAD)
    model = build(method, base).eval()
    plain = load_body(base).eval()
    with torch.no_grad():
        adapted = model.body(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(adapted, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_reach_the_verse(base, method):
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], PAD)
    model = build(method, base).eval()
    with torch.no_grad():
        h = model.body(input_ids=ids, attention_mask=mask).last_hidden_state[:, -ids.shape[1] :]
        plain = load_body(base).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert h.shape == plain.shape and not torch.allclose(h, plain, atol=1e-3)


def test_adapter_up_projections_start_at_zero(base):
    model = build("adapter", base)
    ups = [p for n, p in model.named_parameters() if ".adapter.up." in n]
    assert len(ups) == 2 * 2 * N_LAYER  # weight and bias, after attention and after the MLP of every block
    assert all(torch.count_nonzero(p) == 0 for p in ups)


@pytest.mark.parametrize("method", list(METHODS))
def test_training_changes_only_trainable_weights_and_round_trips(base, data, method, tmp_path):
    model = build(method, base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seqs, labels = data
    train(model, (seqs, labels), (seqs[:6], labels[:6]), 1e-2, train_params(), PAD, tmp_path / "ckpt", "fp")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable_names(model)

    model.eval()
    info = classifier_info(run_params(method), ["a", "b", "c"], train_params().pooling, base)
    save_classifier(model, tmp_path, info)
    loaded = load_classifier(tmp_path)
    ids, mask = pad_batch(seqs, PAD)
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask).logits, model(ids, mask).logits, atol=1e-5)
    assert predict(loaded, seqs, PAD, 5) == predict(model, seqs, PAD, 5)


@pytest.mark.parametrize("method", ["full", "prompt_tuning", "prefix_tuning"])
def test_a_prediction_does_not_depend_on_its_batch(base, data, method):
    """What lets predict() batch verses by length: padding (and batch-mates) change no logits."""
    model = build(method, base).eval()
    seqs = data[0]
    with torch.no_grad():
        batched = model(*pad_batch(seqs, PAD)).logits
        alone = torch.cat([model(*pad_batch([s], PAD)).logits for s in seqs])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert predict(model, seqs, PAD, 5) == batched.argmax(-1).tolist()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"method": "bitfit"}, "x.method: unknown fine-tuning method 'bitfit'; expected one of full, freeze, lora"),
        ({"method": "freeze"}, "x.freeze: method freeze needs a freeze: section (train_top_blocks)"),
        ({"method": "freeze", "freeze": {"train_top_blocks": -1}}, "x.freeze.train_top_blocks: must be >= 0"),
        ({"method": "lora", "lora": {**KNOBS["lora"], "r": 0}}, "x.lora.r: LoRA rank must be >= 1"),
        ({"method": "ia3", "ia3": {"target_modules": ["c_attn"], "feedforward_modules": ["mlp.c_proj"]}},
         "x.ia3.feedforward_modules: mlp.c_proj not in target_modules"),
        ({"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 0, "init": "random"}},
         "x.prompt_tuning.num_virtual_tokens: must be >= 1, got 0"),
        ({"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 4, "init": "text"}},
         "x.prompt_tuning.init: expected random or sample_vocab"),
        ({"method": "prefix_tuning", "prefix_tuning": {"num_virtual_tokens": 0}},
         "x.prefix_tuning.num_virtual_tokens: must be >= 1"),
        ({"method": "adapter", "adapter": {"bottleneck": 0}}, "x.adapter.bottleneck: must be >= 1"),
        ({"method": "full", "lora": KNOBS["lora"]}, "x.lora: knobs of method lora, but this run's method is full"),
        ({"method": "lora", "lora": KNOBS["lora"], "init": "scratch"}, "x.method: init scratch trains a random body"),
    ],
)  # fmt: skip
def test_bad_knobs_fail_naming_the_key(section, message):
    data = {"init": "pretrained", "lr_scale": 1.0, "augmented": False, **section}
    with pytest.raises(ParamsError, match=re.escape(f"finetune.runs.{message}")):
        from_dict(RunParams, data, "finetune.runs.x")


@pytest.mark.parametrize(
    "method, knobs, message",
    [
        ("freeze", {"train_top_blocks": 3}, "freeze.train_top_blocks: 3 is more than the body's 2 blocks"),
        ("prompt_tuning", {"num_virtual_tokens": 32}, "prompt_tuning.num_virtual_tokens: 32 leaves no positions"),
        ("prefix_tuning", {"num_virtual_tokens": 40}, "prefix_tuning.num_virtual_tokens: 40 leaves no positions"),
    ],
)
def test_knobs_the_body_bounds_fail_naming_the_key(base, method, knobs, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        build(method, base, **knobs)


def test_every_run_in_params_yaml_is_valid_and_every_method_has_its_section():
    import yaml

    finetune = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]
    for key in ("runs", "extra_runs"):
        for name in finetune.get(key, {}):
            load_params(f"finetune.{key}.{name}", RunParams, ROOT / "params.yaml")
    fields = {f.name: f.type for f in dataclasses.fields(RunParams)}
    for name, m in METHODS.items():
        if m.knobs is not None:
            assert fields[name] == m.knobs | None, name


def test_every_bt_run_is_its_method_plus_the_paraphrases():
    import yaml

    finetune = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]
    runs = {**finetune["runs"], **finetune["extra_runs"]}
    pairs = [(name, name[:-3]) for name in runs if name.endswith("_bt")]
    assert {base for _, base in pairs} >= {"full", "lora", "freeze", "adapter", "ia3", "prompt_tuning",
                                           "prefix_tuning", "qlora"}  # fmt: skip
    for bt, base in pairs:
        assert runs[bt]["augmented"] and not runs[base]["augmented"], bt
        assert {k: v for k, v in runs[bt].items() if k != "augmented"} == {
            k: v for k, v in runs[base].items() if k != "augmented"
        }, bt
