"""Convert fine-tuning runs saved before the standard format (body/, head.safetensors, classifier.json) into it, and
check that each converted folder predicts, on the test verses, exactly what the run's predictions.jsonl recorded.

    python -m scripts.convert_runs models/7_finetune/full models/7_finetune/lora --out /tmp/converted
    -> /tmp/converted/full, /tmp/converted/lora: the folders `dvc repro` now writes (no card: the stages write it),
       and per run {"test_verses": 3305, "same_labels": 3305}

Reading the old layout is the old load_classifier, kept here only for this. The check is the evidence that the
format change moves no accuracy: the old predictions came from the model in memory at the end of training; the new
labels come from the converted folder, through specialist.predict on the verses' text.
"""

import argparse
import json
import shutil
from pathlib import Path

from specialist.classifier import BASE, export
from specialist.predict import predict
from stages.finetune import Classifier, load_body
from stages.methods import METHODS
from stages.training import checkpoint_source

TASK = Path("data/3_tokenize/task")


def load_legacy(path: Path) -> Classifier:
    """A run saved by save_classifier before the standard format, as the training Classifier (trainable flags set as
    in training, so export finds the same tensors)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from stages.common import from_dict

    info = json.loads((path / "classifier.json").read_text())
    method = METHODS[info["method"]]
    if method.saves == "body":
        body = load_body(path / "body")
    elif method.saves == "peft":
        body = PeftModel.from_pretrained(load_body(checkpoint_source(info["base"])), path / "body")
        for name, p in body.named_parameters():  # what trained (PEFT loads prompt learning frozen only)
            p.requires_grad_(any(k in name for k in ("lora_", "ia3_", "prompt_encoder")))
    else:
        knobs = from_dict(method.knobs, info["knobs"], f"{path}/classifier.json: knobs")
        body = method.build(load_body(checkpoint_source(info["base"])), knobs)
        body.load_state_dict(load_file(str(path / "trained.safetensors")), strict=False)
    model = Classifier(body, info["num_labels"], info["pooling"], 0.0)
    model.head.load_state_dict(load_file(str(path / "head.safetensors")))
    return model.eval()


def convert(src: Path, dest: Path) -> None:
    """The old run at src as a standard folder at dest (its tokenizer at the body's positions, meta.json kept)."""
    from transformers import AutoTokenizer

    info = json.loads((src / "classifier.json").read_text())
    model = load_legacy(src)
    knobs = info.get("knobs") or {}
    export(model, dest, info["labels"], info["method"], str(dest / BASE), knobs.get("bottleneck"))
    tokenizer = AutoTokenizer.from_pretrained(src)
    body = model.body.get_base_model() if hasattr(model.body, "get_base_model") else model.body
    virtual = knobs.get("num_virtual_tokens", 0)
    tokenizer.model_max_length = min(body.config.max_position_embeddings - virtual, tokenizer.model_max_length)
    tokenizer.save_pretrained(dest)
    for name in ("meta.json", "predictions.jsonl"):
        shutil.copy2(src / name, dest / name)


def verify(folder: Path, task: Path = TASK) -> dict:
    """Test verses whose label from the folder (specialist.predict on their text) equals predictions.jsonl's."""
    from datasets import load_from_disk

    test = load_from_disk(str(task / "test"))
    saved = {(r["book"], r["chapter"], r["verse"]): r["prediction"] for r in map(json.loads,
             (folder / "predictions.jsonl").read_text().splitlines()) if r["split"] == "test"}  # fmt: skip
    labels = test.features["label"].names
    rows = predict(list(test["text"]), folder)
    keys = zip(test["book"], test["chapter"], test["verse"], strict=True)
    same = sum(labels.index(r["label"]) == saved[k] for r, k in zip(rows, keys, strict=True))
    return {"test_verses": len(rows), "same_labels": same}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.convert_runs", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="old-format run folders (models/7_finetune/<run>)")
    ap.add_argument("--out", type=Path, required=True, help="where the converted folders go, one per run")
    ap.add_argument("--task", type=Path, default=TASK, help="the task with the test verses (default: %(default)s)")
    a = ap.parse_args(argv)
    for src in a.runs:
        convert(src, a.out / src.name)
        print(json.dumps({"run": src.name, **verify(a.out / src.name, a.task)}), flush=True)


if __name__ == "__main__":
    main()
