"""Fine-tuning methods: what of the pre-trained body trains. One small builder per method; METHODS at the bottom.

A builder takes the transformer body (a transformers GPT2Model; a BertModel or another AutoModel for a run with
`init: checkpoint`) and the method's knobs (its section of the run in
params.yaml, named like the method) and returns the body to put under the classifier, with `requires_grad` set on
exactly what trains. The classifier's head always trains. `saves` says what kind of folder a run exports
(specialist.classifier.export): `body` and `trained` a standard save_pretrained folder with every weight (the
adapter's Houlsby modules rebuilt from the config); `peft` a PEFT SEQ_CLS adapter on a base shipped inside.

| method        | trains, besides the head                                 | knobs                         | saves   |
|---------------|----------------------------------------------------------|-------------------------------|---------|
| full          | every weight                                             | -                             | body    |
| freeze        | the top k blocks and the final layer norm ln_f           | train_top_blocks (0..n_layer) | trained |
| lora          | low-rank updates of the targeted projections (PEFT)      | r, alpha, dropout, targets    | peft    |
| ia3           | per-channel scales of c_attn's q,k,v and MLP (PEFT)      | target/feedforward_modules    | peft    |
| prompt_tuning | virtual token embeddings prepended to the input (PEFT)   | num_virtual_tokens, init      | peft    |
| prefix_tuning | virtual keys and values prepended in every layer (PEFT)  | num_virtual_tokens            | peft    |
| adapter       | bottleneck adapters after attention and MLP; layer norms | bottleneck                    | trained |
| qlora         | LoRA's updates, on a body whose matrices are 4-bit NF4   | lora's + checkpointing        | peft    |

`freeze` trains ln_f with the top blocks: it normalises the top block's output right before the head, so a
frozen ln_f would fix the scale the head sees while the block under it moves. PEFT wraps the body, not the
classifier: its prompt-learning methods inject their prompts in PeftModelForFeatureExtraction's forward, which a
wrapped custom module never reaches; the body is a plain transformers model, the case PEFT is built for.
Prompt and prefix tuning put num_virtual_tokens positions before the verse (GPT-2 numbers the verse's tokens after
them), so they plus the longest verse must fit the body's positions (max_position_embeddings, GPT-2's n_positions:
pretrain's block_size); finetune.run checks.

Other bodies: `full` and the PEFT methods work on any AutoModel, with target_modules named as in that body (BERT:
query, key, value, dense); LoRA and IA3 store the weight transposed only where the body uses GPT-2's Conv1D. `freeze`
and `adapter` know GPT-2's blocks (body.h, ln_f, attn/mlp.c_proj) and refuse other bodies with a message.

`qlora` (Dettmers et al., 2023) is `lora` on a frozen body whose linear weights are stored in 4 bits: its Method
says `four_bit`, so finetune loads the body with transformers' BitsAndBytesConfig (quantization_config(): NF4,
double quantization, compute in fp32 on a CPU and bf16 on a GPU; the fp32 body is never held whole) and every
projection becomes bitsandbytes' Linear4bit (GPT-2's Conv1D too: transformers transposes its weight into an
nn.Linear's before quantizing, so LoRA then needs no fan_in_fan_out). PEFT's prepare_model_for_kbit_training freezes
it (and checkpoints activations if asked), and LoRA goes on top. The backend is bitsandbytes (0.50.2, pinned in the
`models` extra): the reference implementation on a GPU and, on a CPU, its own CPU backend (measured: bench/qlora.py).
What stays fp32: the token and position embeddings, the layer norms, every bias, LoRA's A and B and the classifier's
head (outside the body). A 4-bit matrix holds 0.5 byte a weight, one byte of scale per 64 weights (the block's
absmax, itself quantized to 8 bits), 4 bytes per 256 blocks (the second level's fp32 scales) and a 4-byte offset
(weight_bytes() counts them): 12.9% of its fp32 bytes. The 4 x 256 body: its 16 matrices, 12,582,912 bytes in fp32,
take 1,623,936; its embeddings, norms and biases (4,380,672 bytes) stay fp32, so the whole base is at 35.4%
(reports/bench/qlora.json). The run saves as the other PEFT runs, its base/ folder 4-bit with the quantization config
in its config.json, so loading it rebuilds the same quantized model. Without bitsandbytes a qlora run fails at its
params, before any work.
"""

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from specialist.classifier import insert_adapters
from stages.common import ParamsError


@dataclass(frozen=True)
class FreezeParams:
    train_top_blocks: int  # 0 = head (+ ln_f) only, a linear probe; n_layer = every block, embeddings frozen

    def validate(self):
        if self.train_top_blocks < 0:
            yield f"train_top_blocks: must be >= 0, got {self.train_top_blocks}"


@dataclass(frozen=True)
class LoraParams:
    r: int  # rank: higher adapts more and trains more parameters
    alpha: int  # scaling = alpha / r
    dropout: float
    target_modules: list[str]

    def validate(self):
        if self.r < 1:
            yield f"r: LoRA rank must be >= 1, got {self.r}"
        if not self.target_modules:
            yield "target_modules: name at least one module (GPT-2: c_attn, c_proj, c_fc; BERT: query, key, value)"


@dataclass(frozen=True)
class QloraParams(LoraParams):  # lora's knobs, on the 4-bit body
    gradient_checkpointing: bool  # recompute activations in backward: less memory, more time a step


def missing_backend() -> str | None:
    """Why qlora cannot run here (bitsandbytes, its 4-bit backend, does not import), or None. RunParams checks it,
    so a qlora run without it stops at its params, before any data or model is read."""
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as e:
        return (f"qlora needs bitsandbytes for its 4-bit weights ({e}): pip install bitsandbytes==0.50.2 "
                f"(pyproject.toml's models extra), or choose another method")  # fmt: skip
    return None


@dataclass(frozen=True)
class IA3Params:
    target_modules: list[str]  # modules whose output (or, for feedforward ones, input) is rescaled
    feedforward_modules: list[str]  # of target_modules, those scaled on their input (the MLP's c_proj)

    def validate(self):
        if not self.target_modules:
            yield "target_modules: name at least one module (c_attn, mlp.c_proj)"
        extra = [m for m in self.feedforward_modules if m not in self.target_modules]
        if extra:
            yield f"feedforward_modules: {', '.join(extra)} not in target_modules"


@dataclass(frozen=True)
class PromptTuningParams:
    num_virtual_tokens: int  # prompt length; the verse's positions shift by this much (needs room in n_positions)
    init: str  # random | sample_vocab (embeddings of random vocabulary tokens: the scale the body expects)

    def validate(self):
        if self.num_virtual_tokens < 1:
            yield f"num_virtual_tokens: must be >= 1, got {self.num_virtual_tokens}"
        if self.init not in ("random", "sample_vocab"):
            yield f"init: expected random or sample_vocab, got {self.init!r}"


@dataclass(frozen=True)
class PrefixTuningParams:
    num_virtual_tokens: int  # prefix length, in every layer; positions shift by this much too

    def validate(self):
        if self.num_virtual_tokens < 1:
            yield f"num_virtual_tokens: must be >= 1, got {self.num_virtual_tokens}"


@dataclass(frozen=True)
class AdapterParams:
    bottleneck: int  # adapter width: hidden -> bottleneck -> hidden; trains 2 * 2 * n_layer * hidden * bottleneck

    def validate(self):
        if self.bottleneck < 1:
            yield f"bottleneck: must be >= 1, got {self.bottleneck}"


def full(body, knobs: None):
    """Every weight trains."""
    return body


def _gpt2_only(body, method: str) -> None:
    if not (hasattr(body, "h") and hasattr(body, "ln_f")):
        raise ParamsError(f"method: {method} knows GPT-2 bodies only (blocks body.h, final norm ln_f), not "
                          f"a {type(body).__name__}; use full or lora (or ia3, prompt/prefix tuning)")  # fmt: skip


def freeze(body, knobs: FreezeParams):
    """Only the top `train_top_blocks` blocks and ln_f train; embeddings and lower blocks stay as pre-trained."""
    _gpt2_only(body, "freeze")
    k, n = knobs.train_top_blocks, len(body.h)
    if k > n:
        raise ParamsError(f"freeze.train_top_blocks: {k} is more than the body's {n} blocks; expected 0..{n}")
    body.requires_grad_(False)
    for block in body.h[n - k :]:
        block.requires_grad_(True)
    body.ln_f.requires_grad_(True)
    return body


def _peft(body, config):
    from peft import get_peft_model

    return get_peft_model(body, config)


def _conv1d(body) -> bool:
    """Whether the body's projections are GPT-2's Conv1D, which stores its weight transposed (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in body.modules())


def lora(body, knobs: LoraParams):
    from peft import LoraConfig

    return _peft(body, LoraConfig(
        task_type="FEATURE_EXTRACTION", r=knobs.r, lora_alpha=knobs.alpha, lora_dropout=knobs.dropout,
        target_modules=list(knobs.target_modules),
        fan_in_fan_out=_conv1d(body),  # GPT-2's Conv1D stores its weight transposed; BERT's nn.Linear does not
    ))  # fmt: skip


def quantization_config(dev):
    """NF4 with double quantization, computing in bf16 on a GPU and fp32 on a CPU; `head` (the classifier's) stays
    in full precision when a saved run's whole model is loaded with it."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32, llm_int8_skip_modules=["head"],
    )  # fmt: skip


def qlora(body, knobs: QloraParams):
    """LoRA (the same knobs) on a body loaded with its matrices in 4-bit NF4 (module docstring): PEFT's
    prepare_model_for_kbit_training freezes it (and turns on activation checkpointing if asked), then lora()."""
    from peft import prepare_model_for_kbit_training

    if not getattr(body, "is_loaded_in_4bit", False):
        raise ValueError("qlora trains a body loaded in 4 bits: load_body(path, quantization_config(device))")
    body = prepare_model_for_kbit_training(body, use_gradient_checkpointing=knobs.gradient_checkpointing)
    for module in body.modules():
        if getattr(getattr(module, "weight", None), "quant_state", None) is not None:
            module._register_load_state_dict_pre_hook(_drop_quant_state)
    return lora(body, knobs)


# a 4-bit weight's quantization state as bitsandbytes writes it into a state dict (weight.absmax, weight.quant_map,
# ...); a Linear4bit takes none back, so a checkpoint's copy is dropped on load: the frozen body is quantized again
# from the same folder (the checkpoint's fingerprint covers it), to the same bytes
QUANT_STATE = re.compile(r"weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$")


def _drop_quant_state(state_dict, prefix, *_):
    for key in [k for k in state_dict if k.startswith(prefix) and QUANT_STATE.fullmatch(k[len(prefix) :])]:
        del state_dict[key]


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, a 4-bit weight (bitsandbytes packs two a byte) at its real shape."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_numel(p) for p in model.parameters())


def _numel(p) -> int:
    state = getattr(p, "quant_state", None)  # bitsandbytes' Params4bit: (n / 2, 1) bytes holding an (out, in) matrix
    return state.shape.numel() if state is not None else p.numel()


def weight_bytes(body) -> dict:
    """Bytes of the frozen body's weights: {"matrices": its linear layers' weights, "other": embeddings, norms and
    biases}.

    A 4-bit matrix counts its packed weights (0.5 byte each), its block scales (1 byte per 64) and the double
    quantization's scales and offset (4 bytes per 256 blocks, and 4); the two code tables all 4-bit layers share
    (16 and 256 floats) are counted once, in "matrices". LoRA's tensors (lora_A, lora_B) are left out. A plain fp32
    body: matrices = 4 bytes x their weights (4 x 256 GPT-2: 16 matrices, 3,145,728 weights, 12,582,912 bytes).
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    counts, tables = {"matrices": 0, "other": 0}, {}
    for name, module in body.named_modules():
        if "lora_" in name:
            continue
        for pname, p in module.named_parameters(recurse=False):
            matrix = pname == "weight" and isinstance(module, torch.nn.Linear | Conv1D)  # Linear4bit is an nn.Linear
            counts["matrices" if matrix else "other"] += p.numel() * p.element_size()
            if (state := getattr(p, "quant_state", None)) is not None:
                counts["matrices"] += _nbytes(state.absmax)
                tables["code"] = _nbytes(state.code)
                if state.nested:
                    counts["matrices"] += _nbytes(state.state2.absmax) + _nbytes(state.offset)
                    tables["nested_code"] = _nbytes(state.state2.code)
    counts["matrices"] += sum(tables.values())
    return counts


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def ia3(body, knobs: IA3Params):
    from peft import IA3Config

    return _peft(body, IA3Config(
        task_type="FEATURE_EXTRACTION", target_modules=list(knobs.target_modules),
        feedforward_modules=list(knobs.feedforward_modules), fan_in_fan_out=_conv1d(body),
    ))  # fmt: skip


def _check_positions(body, virtual: int, key: str) -> None:
    n = body.config.max_position_embeddings  # GPT-2's n_positions
    if virtual >= n:
        raise ParamsError(f"{key}.num_virtual_tokens: {virtual} leaves no positions of the body's {n} for the verse")


def prompt_tuning(body, knobs: PromptTuningParams):
    from peft import PromptTuningConfig

    _check_positions(body, knobs.num_virtual_tokens, "prompt_tuning")
    return _peft(body, PromptTuningConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=knobs.num_virtual_tokens,
        prompt_tuning_init=knobs.init.upper(),
    ))  # fmt: skip


def prefix_tuning(body, knobs: PrefixTuningParams):
    from peft import PrefixTuningConfig

    _check_positions(body, knobs.num_virtual_tokens, "prefix_tuning")
    return _peft(body, PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=knobs.num_virtual_tokens))


def adapter(body, knobs: AdapterParams):
    """Houlsby adapters after attention and after the MLP of every block; they, the layer norms and ln_f train."""
    _gpt2_only(body, "adapter")
    body.requires_grad_(False)
    insert_adapters(body, knobs.bottleneck)  # specialist.classifier: the exported model rebuilds them from its config
    for block in body.h:
        block.ln_1.requires_grad_(True)
        block.ln_2.requires_grad_(True)
    body.ln_f.requires_grad_(True)
    return body


@dataclass(frozen=True)
class Method:
    build: Callable  # (body, knobs) -> the body, with requires_grad set on what trains
    knobs: type | None  # the dataclass of its section in a run (the section is named like the method)
    saves: str  # body | peft | trained (see the module docstring)
    four_bit: bool = False  # the body is loaded with its matrices in 4 bits (quantization_config), never in fp32


METHODS = {
    "full": Method(full, None, "body"),
    "freeze": Method(freeze, FreezeParams, "trained"),
    "lora": Method(lora, LoraParams, "peft"),
    "ia3": Method(ia3, IA3Params, "peft"),
    "prompt_tuning": Method(prompt_tuning, PromptTuningParams, "peft"),
    "prefix_tuning": Method(prefix_tuning, PrefixTuningParams, "peft"),
    "adapter": Method(adapter, AdapterParams, "trained"),
    "qlora": Method(qlora, QloraParams, "peft", four_bit=True),
}


def virtual_tokens(knobs) -> int:
    """Positions a method puts before the verse (prompt and prefix tuning), 0 for the others."""
    return getattr(knobs, "num_virtual_tokens", 0)
