"""Classify texts with a saved run (any folder specialist.classifier.load opens): label and per-class probabilities.

    from specialist.predict import predict
    predict(["Jesus said to his disciples, follow me"], "models/release")
    -> [{"label": "gospels", "probabilities": {"law": 0.01, ..., "gospels": 0.83, ...}, "truncated": False,
         "model": "models/release"}]

Texts are tokenized with the folder's tokenizer (its special tokens, cut at its model_max_length: the body's
positions) and batched by length, padded on the right, as the pipeline's evaluation batches them, so a test verse
gets the label the pipeline gave it. A text longer than the model takes is truncated and flagged, never refused.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def encode(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
    """(token ids cut at tokenizer.model_max_length, whether each text was cut).

    A text of exactly model_max_length tokens is not cut; one of model_max_length + 1 is.
    """
    limit = tokenizer.model_max_length
    ids = tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
    full = tokenizer(list(texts), verbose=False)["input_ids"]  # lengths only: how many were cut
    return ids, [len(f) > limit for f in full]


@torch.inference_mode()
def probabilities(model, seqs: list[list[int]], pad_id: int, batch_size: int,
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:  # fmt: skip
    """Class probabilities (N, num_labels) of token sequences, in their order; batches of similar length.
    `progress(n)` is called after each batch with the texts it held."""
    dev = next(model.parameters()).device
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()  # as the pipeline predicts on a GPU
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T), right padding
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
            mask[row, : len(seqs[i])] = 1
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits  # (B, num_labels)
        out[idx] = logits.float().softmax(-1).cpu()
        if progress:
            progress(len(idx))
    return out


def classify(model, tokenizer, texts: Sequence[str], batch_size: int = 64, model_name: str = "",
             progress: Callable[[int], None] | None = None) -> list[dict]:  # fmt: skip
    """One dict per text: label, probabilities by label name (6 decimals), truncated, model."""
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    seqs, cut = encode(tokenizer, texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    probs = probabilities(model, seqs, pad, batch_size, progress)
    rows = []
    for p, truncated in zip(probs.tolist(), cut, strict=True):
        best = max(range(len(p)), key=p.__getitem__)
        probs_by_name = {name: round(v, 6) for name, v in zip(labels, p, strict=True)}
        rows.append(
            {"label": labels[best], "probabilities": probs_by_name, "truncated": truncated, "model": model_name}
        )
    return rows


def predict(texts: Sequence[str], model_dir: str | Path, batch_size: int = 64) -> list[dict]:
    """classify() with the run saved at model_dir (a run's folder or models/release), on a GPU when there is one."""
    from specialist.classifier import load

    model, tokenizer = load(model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    return classify(model, tokenizer, texts, batch_size, str(model_dir))
