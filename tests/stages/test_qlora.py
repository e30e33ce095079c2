"""qlora on a tiny GPT-2: its body's matrices are 4-bit NF4 (bitsandbytes), only LoRA and the head train, the base
takes a fraction of lora's bytes, a saved run reloads in a fresh process predicting the same labels, and without
bitsandbytes a run stops at its params naming the package."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stages.common import ParamsError, from_dict
from stages.finetune import RunParams, classifier_info, load_body, predict, save_classifier, train
from stages.methods import quantization_config, weight_bytes
from stages.training import load_checkpoint, pad_batch, save_checkpoint
from tests.stages import test_methods
from tests.stages.test_methods import KNOBS, PAD, build, run_params, train_params

bnb = pytest.importorskip("bitsandbytes")
ROOT = Path(__file__).resolve().parents[2]
base, data = test_methods.base, test_methods.data  # the tiny GPT-2 and its 16 labelled sequences (fixtures)


def test_the_bodys_matrices_are_4bit_and_only_lora_and_the_head_train(base):
    model = build("qlora", base)
    layers = [m for n, m in model.body.named_modules() if n.endswith("base_layer")]
    assert len(layers) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of the 2 blocks, all LoRA-wrapped
    for layer in layers:
        assert isinstance(layer, bnb.nn.Linear4bit) and isinstance(layer.weight, bnb.nn.Params4bit)
        assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.quant_state.nested  # double quantization: the block scales are 8-bit too
        assert not layer.weight.requires_grad
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("head.")}
    inner = model.body.get_base_model()
    assert inner.wte.weight.dtype == inner.ln_f.weight.dtype == model.head.weight.dtype == torch.float32


def test_the_base_takes_at_most_30_percent_of_loras_bytes_for_its_matrices(base):
    """The tiny body's 8 matrices hold 6,144 weights: 24,576 bytes in fp32 (lora). In 4 bits: 3,072 bytes of packed
    weights + 96 block scales (one byte per 64) + 8 x (4-byte second-level scale + 4-byte offset) + the two code
    tables (16 and 256 floats, 1,088 bytes, shared) = 4,320 bytes, 17.6% (the real 4 x 256 body: 12.9%,
    reports/bench/qlora.json). Embeddings, norms and biases stay fp32: the same bytes in both."""
    lora, qlora = weight_bytes(build("lora", base).body), weight_bytes(build("qlora", base).body)
    assert lora["matrices"] == 4 * 6144
    assert qlora["matrices"] == 3072 + 96 + 8 * (4 + 4) + 1088
    assert qlora["matrices"] / lora["matrices"] <= 0.30
    assert qlora["other"] == lora["other"]


def test_qlora_starts_as_its_4bit_body_close_to_the_fp32_one(base):
    """LoRA's B starts at zero, so the body computes what the 4-bit body computes; that is the fp32 body up to NF4's
    rounding (a few hundredths here), not exactly."""
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], PAD)
    model = build("qlora", base).eval()
    with torch.no_grad():
        adapted = model.body(input_ids=ids, attention_mask=mask).last_hidden_state
        four_bit = load_body(base, quantization=quantization_config(torch.device("cpu"))).eval()
        four_bit = four_bit(input_ids=ids, attention_mask=mask).last_hidden_state
        fp32 = load_body(base).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(adapted, four_bit)
    assert 0 < (adapted - fp32).abs().max() < 0.2


def test_a_killed_qlora_run_resumes_from_its_checkpoint(base, data, tmp_path):
    """The training checkpoint holds the 4-bit body as its state dict has it (packed weights + quantization state);
    loading it into a fresh qlora model restores every tensor, the LoRA ones trained."""
    model = build("qlora", base)
    seqs, labels = data
    train(model, (seqs, labels), (seqs[:6], labels[:6]), 1e-2, train_params(epochs=1), PAD, tmp_path / "x", "fp")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path / "ckpt", model, opt, sched, 1, "fp")
    fresh = build("qlora", base, seed=1)
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad])
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 1.0)
    assert load_checkpoint(tmp_path / "ckpt", fresh, fresh_opt, fresh_sched, "fp")
    for (n, p), (_, q) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


LOADER = """
import json, sys
import torch
import specialist.classifier  # registers the specialist model type, as a user does
from peft import AutoPeftModelForSequenceClassification
model = AutoPeftModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
seqs = json.loads(sys.argv[2])
four_bit = sorted({type(m.weight).__name__ for n, m in model.named_modules() if n.endswith("base_layer")})
with torch.no_grad():
    logits = [model(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long)).logits[0]
              for s in seqs]
print(json.dumps({"labels": [int(x.argmax()) for x in logits], "logits": [x.tolist() for x in logits],
                  "weights": four_bit}))
"""


def test_a_saved_qlora_run_reloads_in_a_fresh_process_predicting_the_same_labels(base, data, tmp_path):
    model = build("qlora", base)
    seqs, labels = data
    train(model, (seqs, labels), (seqs[:6], labels[:6]), 1e-2, train_params(), PAD, tmp_path / "ckpt", "fp")
    model.eval()
    save_classifier(model, tmp_path / "run", classifier_info(run_params("qlora"), ["a", "b", "c"], "mean_last", base))
    config = json.loads((tmp_path / "run/base/config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert config["quantization_config"]["bnb_4bit_use_double_quant"] and "quantization_config" not in config["body"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "run"), json.dumps(seqs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["weights"] == ["Params4bit"]
    assert got["labels"] == predict(model, seqs, PAD, 5)
    with torch.no_grad():
        expected = torch.cat([model(*pad_batch([s], PAD)).logits for s in seqs])
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, atol=1e-5, rtol=0)


def test_without_bitsandbytes_a_qlora_run_stops_at_its_params_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    run = {"init": "pretrained", "method": "qlora", "lr_scale": 1.0, "augmented": False, "qlora": KNOBS["qlora"]}
    with pytest.raises(ParamsError, match=re.escape("finetune.runs.x.method: qlora needs bitsandbytes")) as e:
        from_dict(RunParams, run, "finetune.runs.x")
    assert "pip install bitsandbytes==0.50.2" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delitem(sys.modules, "bitsandbytes")  # the real package, installed here: the same run is valid
    assert from_dict(RunParams, run, "finetune.runs.x").qlora.r == KNOBS["qlora"]["r"]


BLOCKED = """
import runpy, sys
sys.modules["bitsandbytes"] = None  # as if it were not installed
sys.argv = ["stages.finetune", "qlora"]
runpy.run_module("stages.finetune", run_name="__main__")
"""


def test_the_stage_without_bitsandbytes_exits_with_one_line_before_reading_anything(tmp_path):
    """`python -m stages.finetune qlora` (params.yaml's qlora run in the matrix) in a directory with no data at all:
    the error is the params key and the package, not a missing file."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    finetune = params["finetune"]
    finetune["runs"] = {"qlora": finetune["extra_runs"]["qlora"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"finetune": finetune}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", BLOCKED], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "finetune.runs.qlora.method: qlora needs bitsandbytes" in done.stderr
    assert "pip install bitsandbytes==0.50.2" in done.stderr


def test_qlora_refuses_a_body_loaded_in_fp32(base):
    """The 4-bit body is loaded quantized (Method.four_bit), never held whole in fp32 first."""
    from stages.methods import METHODS, QloraParams

    assert METHODS["qlora"].four_bit and not METHODS["lora"].four_bit
    with pytest.raises(ValueError, match="qlora trains a body loaded in 4 bits"):
        METHODS["qlora"].build(load_body(base), from_dict(QloraParams, KNOBS["qlora"], "x"))


def test_a_qlora_runs_card_says_loading_needs_bitsandbytes():
    from specialist.card import usage

    qlora, lora = ({"format": "peft", "method": m, "model_path": "models/7_finetune/m"} for m in ("qlora", "lora"))
    assert any("pip install bitsandbytes==0.50.2" in line for line in usage(qlora))
    assert not any("bitsandbytes" in line for line in usage(lora))
