"""Params loading fails loudly, naming the file and key; writes are atomic."""

from dataclasses import dataclass

import pytest

from stages.common import ParamsError, atomic_dir, load_params, write_json
from stages.finetune import RunParams
from stages.pretrain import PretrainParams
from stages.tokenize import TokenizeParams


@dataclass(frozen=True)
class Small:
    lr: float
    steps: int
    name: str = "x"


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_loads_and_converts(tmp_path):
    p = load_params("s", Small, write(tmp_path, "s:\n  lr: 1e-3\n  steps: 3\n"))
    assert p == Small(lr=1e-3, steps=3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("s:\n  lr: 0.1\n  stpes: 3\n", "unknown key(s) stpes"),
        ("s:\n  lr: 0.1\n", "missing key(s) steps"),
        ("s:\n  lr: fast\n  steps: 3\n", "s.lr: expected"),
        ("s:\n  lr: 0.1\n  steps: 2.5\n", "s.steps: expected int, got float"),
        ("t:\n  lr: 0.1\n", "missing section 's'"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as e:
        load_params("s", Small, path)
    assert message in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    "cls, section, message",
    [
        (PretrainParams, "pretrain", "lr: must be > 0"),
        (RunParams, "run", "lora.r: LoRA rank must be >= 1"),
        (RunParams, "run2", "unknown fine-tuning method 'prefix'"),
        (TokenizeParams, "tok", "vocab_size: must exceed"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, cls, section, message):
    path = write(
        tmp_path,
        """
pretrain: {objective: causal, init: scratch, mlm_probability: 0.15, seed: 0, n_layer: 1, n_embd: 8, n_head: 1,
           dropout: 0, optimizer: adamw, lr: -0.1, schedule: cosine, decay_fraction: 0.2, min_lr_ratio: 0.1,
           warmup_steps: 1,
           max_steps: 1, batch_size: 1, grad_accum: 1, weight_decay: 0, grad_clip: 1, eval_every: 1, eval_batches: 1,
           checkpoint_every: 0}
run: {init: pretrained, method: lora, lr_scale: 1, augmented: false,
      lora: {r: 0, alpha: 1, dropout: 0, target_modules: [c_attn]}}
run2: {init: pretrained, method: prefix, lr_scale: 1, augmented: false}
tok: {tokenizer: train, special_tokens: {eos: e, pad: p, mask: m}, vocab_size: 100, min_frequency: 2, block_size: 64,
      max_length: 64, val_fraction: 0.1, seed: 0, num_proc: 1}
""",
    )
    with pytest.raises(ParamsError, match=message):
        load_params(section, cls, path)


def test_atomic_dir_keeps_the_old_output_when_the_writer_fails(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        write_json({"v": 1}, tmp / "a.json")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        write_json({"v": 2}, tmp / "a.json")
        raise RuntimeError("crash mid-write")
    assert (out / "a.json").read_text().strip().endswith("}") and '"v": 1' in (out / "a.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
