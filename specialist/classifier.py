"""The specialist classifier as a standard transformers model: any AutoModel body, pooled over the text, a linear head.

    import specialist.classifier      # registers model_type "specialist" with AutoConfig and
                                      # AutoModelForSequenceClassification (nothing else to do)
    model = AutoModelForSequenceClassification.from_pretrained("models/7_finetune/full")

Why a registered class: no transformers class pools the mean, or the mean and the last token side by side, under a
biased linear head (GPT2ForSequenceClassification scores the last non-pad token, BertForSequenceClassification
the pooler's tanh(dense([CLS]))), so a standard class would predict something else. The folder's config.json names
model_type `specialist` and holds the body's own config, the pooling and id2label; the code is this module, installed
with the project and registered when it is imported, so `trust_remote_code` (which would run Python shipped inside a
model folder) is never needed.

What each fine-tuning method exports (export()), and how it loads:

| method                             | folder                                             | loads with                |
|------------------------------------|----------------------------------------------------|---------------------------|
| full, freeze (scratch, checkpoint) | config.json + model.safetensors                    | AutoModelForSequence-     |
| adapter (Houlsby)                  | the same; config.adapter_bottleneck rebuilds them  | Classification            |
| lora, ia3, prompt/prefix tuning    | PEFT SEQ_CLS adapter, head in modules_to_save; the | AutoPeftModelForSequence- |
|                                    | base (pre-trained body, zero head) in base/        | Classification, or load() |
| qlora                              | the same; base/ holds the body's 4-bit weights and | the same (bitsandbytes    |
|                                    | its config.json the quantization_config            | installed)                |

A PEFT folder records its base as base_model_name_or_path, which PEFT resolves against the cwd; DVC outputs must be
the same bytes in every clone, so it is the base/ folder's path relative to the repository root (no absolute
path), and load() resolves base/ relative to the folder itself, from any cwd. The base's head is zero (the trained
one is PEFT's modules_to_save), so every PEFT run on one body writes the same base/ bytes, stored once by DVC.

The model computes exactly what stages.finetune's training Classifier computes (pool() is shared), so the folder's
logits equal the pipeline's; tests/specialist/test_classifier.py checks every method from a fresh process.
"""

import copy
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "last", "first", "mean_last")
BASE = "base"  # a PEFT run's base model, inside its folder
PEFT_METHODS = ("lora", "ia3", "prompt_tuning", "prefix_tuning", "qlora")  # stages.methods' `saves: peft`


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The text's hidden states h (B, T, H) pooled over its real tokens (mask (B, T), right padding): (B, H), or
    (B, 2H) for mean_last. mean averages the real tokens; last takes the last real one (the only one a causal body
    has read the whole text at); first the first (BERT's [CLS]); mean_last the mean and the last side by side."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)
    last = h[torch.arange(len(h), device=h.device), mask.sum(1).long() - 1]  # (B, H)
    pooled = {"mean": mean, "first": h[:, 0], "last": last}.get(pooling)
    return torch.cat([mean, last], -1) if pooled is None else pooled  # mean_last: (B, 2H)


class Adapter(torch.nn.Module):
    """Houlsby et al. (2019) bottleneck adapter: x + up(gelu(down(x))).

    `up` starts at zero, so an inserted adapter is the identity and training starts from the pre-trained model.
    """

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = torch.nn.Linear(hidden, bottleneck)
        self.up = torch.nn.Linear(bottleneck, hidden)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x):  # (B, T, H)
        return x + self.up(torch.nn.functional.gelu(self.down(x), approximate="tanh"))


class Adapted(torch.nn.Module):
    """A sublayer's output projection, then an adapter: Houlsby's place, before the residual sum."""

    def __init__(self, proj: torch.nn.Module, adapter: Adapter):
        super().__init__()
        self.proj, self.adapter = proj, adapter

    def forward(self, x):
        return self.adapter(self.proj(x))


def insert_adapters(body, bottleneck: int):
    """A Houlsby adapter after the attention and after the MLP of every GPT-2 block (body.h), in place."""
    hidden = body.config.hidden_size
    for block in body.h:
        block.attn.c_proj = Adapted(block.attn.c_proj, Adapter(hidden, bottleneck))
        block.mlp.c_proj = Adapted(block.mlp.c_proj, Adapter(hidden, bottleneck))
    return body


class SpecialistConfig(PreTrainedConfig):
    """The body's own config (`body`, any AutoConfig) + how the head reads it; labels in id2label/label2id."""

    model_type = "specialist"
    sub_configs_defaults = {"body": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    body: dict | PreTrainedConfig | None = None
    pooling: str = "mean"  # mean | last | first | mean_last
    prompt_positions: int = 0  # positions before the text that hold a prompt (PEFT prompt tuning); pooling skips them
    adapter_bottleneck: int | None = None  # Houlsby adapters of this width in every block (the `adapter` method)
    head_dropout: float = 0.0  # before the head, while training

    def get_text_config(self, *args, **kwargs):
        """The body's config: what PEFT reads the vocabulary size and layer counts from."""
        return self.body


class SpecialistForSequenceClassification(PreTrainedModel):
    """The body (AutoModel.from_config(config.body)), pooled over the text (pool()), then dropout and a linear head."""

    config_class = SpecialistConfig
    base_model_prefix = "body"
    _supports_sdpa = True  # the body's attention, whichever the body supports
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: SpecialistConfig):
        super().__init__(config)
        self.body = AutoModel.from_config(config.body)
        if config.adapter_bottleneck:
            insert_adapters(self.body, config.adapter_bottleneck)
        self.dropout = torch.nn.Dropout(config.head_dropout)
        width = config.body.hidden_size * (2 if config.pooling == "mean_last" else 1)
        self.head = torch.nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "head", None):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.body.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                token_type_ids=None, **kwargs):  # fmt: skip
        """Logits (B, num_labels). token_type_ids are ignored (one text: BERT's default zeros, as in training);
        past_key_values is prefix tuning's prefix, and the mask then covers it too."""
        batch = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(batch.shape[:2], dtype=torch.long, device=batch.device)
        extra = {"past_key_values": past_key_values} if past_key_values is not None else {}
        h = self.body(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      **extra).last_hidden_state  # (B, L, H)  # fmt: skip
        mask = attention_mask[:, attention_mask.shape[1] - h.shape[1] :]  # prefix tuning's keys have no outputs
        skip = self.config.prompt_positions  # prompt tuning's prompt comes first
        logits = self.head(self.dropout(pool(h[:, skip:], mask[:, skip:], self.config.pooling))).float()
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register("specialist", SpecialistConfig, exist_ok=True)
AutoModelForSequenceClassification.register(SpecialistConfig, SpecialistForSequenceClassification, exist_ok=True)


def specialist_config(body_config, labels: list[str], pooling: str, **kw) -> SpecialistConfig:
    """The config of a run: its body's config, labels (in id order), pooling and method extras (kw)."""
    body = {k: v for k, v in body_config.to_dict().items() if k not in ("_name_or_path", "quantization_config")}
    if (quantized := getattr(body_config, "quantization_config", None)) is not None:  # qlora: the whole model's
        kw["quantization_config"] = quantized if isinstance(quantized, dict) else quantized.to_dict()
    return SpecialistConfig(
        body=body, pooling=pooling, id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, **kw,
    )  # fmt: skip


def _base_body_state(body) -> dict:
    """The frozen pre-trained weights of a PEFT-wrapped body under their plain names: LoRA's and IA3's wrapped layers
    keep the original weight as `<layer>.base_layer.weight`; their own tensors (lora_, ia3_) are left out."""
    inner = body.get_base_model()
    state = {}
    for name, tensor in inner.state_dict().items():
        if ".lora_" in name or ".ia3_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def export(classifier, path: Path, labels: list[str], method: str, peft_base: str | None = None,
           adapter_bottleneck: int | None = None) -> None:  # fmt: skip
    """Write a trained classifier (stages.finetune.Classifier: .body, .head, .pooling) as a standard folder.

    `method` decides the format (module docstring); a PEFT run's base goes to path/base and `peft_base` is the path
    recorded for it in adapter_config.json (the repo-relative path of path/base). Weights are copied, never
    recomputed, and every tensor must land (strict loading), so the folder computes what the classifier did.
    """
    path = Path(path)
    pooling, head = classifier.pooling, classifier.head.state_dict()
    kw = {"head_dropout": classifier.dropout.p}
    if method in PEFT_METHODS:
        return _export_peft(classifier, path, labels, peft_base or str(path / BASE), kw)
    if adapter_bottleneck:
        kw["adapter_bottleneck"] = adapter_bottleneck
    model = SpecialistForSequenceClassification(specialist_config(classifier.body.config, labels, pooling, **kw))
    model.body.load_state_dict(classifier.body.state_dict(), strict=True)
    model.head.load_state_dict(head, strict=True)
    model.save_pretrained(path)


def _export_peft(classifier, path: Path, labels: list[str], base_path: str, kw: dict) -> None:
    """A PEFT-wrapped body + head -> path/base (plain body, zero head) and a SEQ_CLS adapter with the head."""
    from peft import get_peft_model

    peft_body = classifier.body
    trained = peft_body.peft_config["default"]
    if trained.is_prompt_learning and trained.peft_type.value == "PROMPT_TUNING":
        kw["prompt_positions"] = trained.num_virtual_tokens
    inner = peft_body.get_base_model()
    base_config = specialist_config(inner.config, labels, classifier.pooling, **kw)
    if hasattr(base_config, "quantization_config"):  # qlora: a 4-bit body
        base = _save_quantized_base(base_config, _base_body_state(peft_body), classifier.head, path / BASE)
    else:
        base = SpecialistForSequenceClassification(base_config)
        base.body.load_state_dict(_base_body_state(peft_body), strict=True)
        base.save_pretrained(path / BASE)  # before PEFT injects its layers into it
    base.name_or_path = base_path  # what PEFT records as base_model_name_or_path
    config = copy.deepcopy(trained)  # the same knobs, and the layer counts PEFT inferred from the body's config
    config.task_type, config.modules_to_save, config.inference_mode = "SEQ_CLS", ["head"], False
    config.base_model_name_or_path = base_path
    model = get_peft_model(base, config)
    new = {_canonical(n, new=True): p for n, p in model.named_parameters() if p.requires_grad}
    old = {_canonical(n, new=False): p for n, p in classifier.named_parameters() if p.requires_grad}
    if set(new) != set(old):
        raise RuntimeError(f"PEFT export: tensors differ: {sorted(set(new) ^ set(old))[:6]}")
    with torch.no_grad():
        for name, p in new.items():
            p.copy_(old[name])
    model.save_pretrained(path)
    adapter = path / "adapter_config.json"  # PEFT writes its sets in hash order: sorted, a rerun writes the same bytes
    config = json.loads(adapter.read_text())
    sets = ("target_modules", "modules_to_save", "feedforward_modules")
    config = {k: sorted(set(v)) if k in sets and isinstance(v, list) else v for k, v in config.items()}
    adapter.write_text(json.dumps({**config, "base_model_name_or_path": base_path}, indent=2) + "\n")
    (path / "README.md").unlink(missing_ok=True)  # PEFT's stub card; the stage writes the real one


def _save_quantized_base(config: SpecialistConfig, body_state: dict, head, path: Path):
    """A 4-bit body's base folder, as transformers saves a bitsandbytes model: config.json with its
    quantization_config, model.safetensors with each matrix's packed weights and quantization state (weight.absmax,
    weight.quant_map, ...) and a zero head; returns it loaded back as a user loads it (strict: every tensor lands)."""
    from safetensors.torch import save_file

    tensors = {f"body.{k}": v for k, v in body_state.items()}
    tensors |= {f"head.{k}": torch.zeros_like(v) for k, v in head.state_dict().items()}
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise RuntimeError(f"qlora export: {path} does not load as saved: {info}")
    return model


def _canonical(name: str, new: bool) -> str:
    """One name for a trained tensor in the training classifier and in the exported PEFT model:
    body.base_model.model.h.0.attn.c_attn.lora_A.default.weight (training) and
    base_model.model.body.h.0.attn.c_attn.lora_A.default.weight (export) -> h.0.attn.c_attn.lora_A.default.weight;
    head.weight and base_model.model.head.modules_to_save.default.weight -> head.weight."""
    if new:
        name = name.removeprefix("base_model.model.").removeprefix("base_model.").removeprefix("body.")
        return name.replace("head.modules_to_save.default.", "head.")
    return name.removeprefix("body.").removeprefix("base_model.model.")


def load_model(path: str | Path):
    """The model of a run's folder, in eval mode: a standard folder with AutoModelForSequenceClassification, a PEFT
    one with its base resolved inside the folder (so from any cwd, unlike base_model_name_or_path)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(path / BASE), path).eval()
    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def load(path: str | Path):
    """(model, tokenizer) of a run's folder (load_model; the tokenizer saved beside it)."""
    from transformers import AutoTokenizer

    return load_model(path), AutoTokenizer.from_pretrained(path)


def merge_lora(path: str | Path, out: str | Path) -> None:
    """A LoRA (or IA3) run merged into a standard folder at `out`: the adapters folded into the body's weights, the
    trained head in place; AutoModelForSequenceClassification loads it (logits equal to about 1e-6: the merged
    weights round once)."""
    merged = load_model(path).merge_and_unload()
    merged.save_pretrained(out)
    if (Path(path) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path).save_pretrained(out)
