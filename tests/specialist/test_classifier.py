"""specialist.classifier: every run exports a folder the field's own loaders open, predicting what the pipeline did.

Three kinds: in-process parity of the export with the trained model (every method, a GPT-2 and a BERT body); a round
trip of every run in params.yaml (finetune.runs and extra_runs) through stages.finetune.run on a tiny workspace,
then a fresh Python process given only each folder's path (transformers' or PEFT's Auto class, and load() from
another cwd); LoRA's merge into a standard folder.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification

from specialist.card import check
from specialist.classifier import PEFT_METHODS, SpecialistForSequenceClassification, load_model, merge_lora
from specialist.predict import predict as predict_texts
from stages.common import from_dict, load_params
from stages.finetune import RunParams, TrainParams, build_classifier, classifier_info, save_classifier
from stages.finetune import run as finetune_run
from stages.ingest import LABELS
from stages.pretrain import PretrainParams, build_model
from stages.tokenize import train_tokenizer
from stages.training import pad_batch
from tests.conftest import VERSES
from tests.stages.test_checkpoint_init import save_tiny_bert
from tests.stages.test_methods import KNOBS, base, run_params, train_params  # noqa: F401 - base is a fixture

ROOT = Path(__file__).resolve().parents[2]
PEFT = PEFT_METHODS  # qlora too: a PEFT adapter on a 4-bit base


def perturbed(model):
    """The model with every trainable tensor moved off its initial value (zero-initialised adapters included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("method", list(KNOBS))
@pytest.mark.parametrize("pooling", ["mean_last", "mean"])
def test_the_export_computes_exactly_what_the_trained_classifier_computes(base, tmp_path, method, pooling):  # noqa: F811
    t = dataclasses.replace(train_params(), pooling=pooling)
    torch.manual_seed(0)
    model = perturbed(build_classifier(run_params(method), base, 3, t))
    ids, mask = pad_batch([[5, 6, 7, 8, 9], [9, 10], [11, 12, 13]], 1)
    save_classifier(model, tmp_path, classifier_info(run_params(method), ["a", "b", "c"], pooling, base))
    with torch.no_grad():
        expected = model(ids, mask).logits
        got = load_model(tmp_path)(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, expected)
    folder = tmp_path / "base" if method in PEFT else tmp_path
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "specialist" and config["pooling"] == pooling
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c"} and config["label2id"] == {"a": 0, "b": 1, "c": 2}
    if method in PEFT:
        adapter = json.loads((tmp_path / "adapter_config.json").read_text())
        assert adapter["task_type"] == "SEQ_CLS" and "head" in adapter["modules_to_save"]
        assert config["prompt_positions"] == (3 if method == "prompt_tuning" else 0)


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning", "prefix_tuning"])
def test_a_bert_body_exports_too(tmp_path, method):
    bert = save_tiny_bert(tmp_path / "bert")
    knobs = {
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["query", "value"]},
        "prompt_tuning": {"num_virtual_tokens": 3, "init": "random"},
        "prefix_tuning": {"num_virtual_tokens": 3},
    }
    data = {"init": "checkpoint", "checkpoint": str(bert), "method": method, "lr": 1e-3, "augmented": False}
    r = from_dict(RunParams, {**data, **({method: knobs[method]} if method in knobs else {})}, "x")  # fmt: skip
    t = dataclasses.replace(train_params(), pooling="first")
    model = perturbed(build_classifier(r, Path("unused"), 3, t))
    ids, mask = pad_batch([[2, 1, 4, 1, 3], [2, 4, 3]], 0)  # the tiny vocabulary: 5 ids
    save_classifier(model, tmp_path / "run", classifier_info(r, ["a", "b", "c"], "first", Path("unused")))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "run")(input_ids=ids, attention_mask=mask).logits,
                           model(ids, mask).logits)  # fmt: skip


def test_merge_lora_writes_a_standard_folder_with_the_same_logits(base, tmp_path):  # noqa: F811
    model = perturbed(build_classifier(run_params("lora"), base, 3, train_params()))
    save_classifier(model, tmp_path / "lora", classifier_info(run_params("lora"), ["a", "b", "c"], "mean_last", base))
    merge_lora(tmp_path / "lora", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert isinstance(merged, SpecialistForSequenceClassification) and not (tmp_path / "merged/base").exists()
    ids, mask = pad_batch([[5, 6, 7, 8, 9], [9, 10], [11, 12, 13]], 1)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, model(ids, mask).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip


# --- every run of params.yaml, through the stage, then a fresh process ---------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A directory laid out as the pipeline's (models/4_pretrain, data/3_tokenize/{task,tokenizer}, data/6_augment,
    models/4_dapt: a tiny BERT for minilm_dapt); the task has the verses' text, as the real one does."""
    root = tmp_path_factory.mktemp("release_project")
    texts = list(VERSES.values()) * 30
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    tok.save_pretrained(root / "data/3_tokenize/tokenizer")
    pre = dataclasses.replace(load_params("pretrain", PretrainParams, ROOT / "params.yaml"), n_layer=2, n_embd=32,
                              n_head=2)  # fmt: skip
    torch.manual_seed(0)
    build_model(pre, tok, 64).save_pretrained(root / "models/4_pretrain")
    tok.save_pretrained(root / "models/4_pretrain")
    (root / "models/4_pretrain/meta.json").write_text(json.dumps({"params": dataclasses.asdict(pre)}))
    rows = [{"text": t + s, "label": y} for y, t in VERSES.items() for s in ("", ".", "!", " now")]
    rows = [{**r, "input_ids": tok.encode(r["text"]), "book": "Gen", "chapter": 1 + i % 3, "verse": i + 1}
            for i, r in enumerate(rows)]  # fmt: skip
    split = Dataset.from_list(rows).cast_column("label", ClassLabel(names=LABELS))
    DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(root / "data/3_tokenize/task")
    Dataset.from_list([{"text": VERSES[0] + " again", "label": 0}]).save_to_disk(root / "data/6_augment")
    save_tiny_bert(root / "models/4_dapt")
    return root


def every_run() -> dict[str, RunParams]:
    finetune = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]
    return {name: load_params(f"finetune.{key}.{name}", RunParams, ROOT / "params.yaml")
            for key in ("runs", "extra_runs") for name in finetune[key]}  # fmt: skip


LOADER = """
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import AutoPeftModelForSequenceClassification
import specialist.classifier  # the registered model type: what a user imports
mode, texts, out = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), {}
for folder in sys.argv[3:]:
    peft = Path(folder, "adapter_config.json").exists()
    if mode == "any-cwd":
        model = specialist.classifier.load_model(folder)
    else:
        auto = AutoPeftModelForSequenceClassification if peft else AutoModelForSequenceClassification
        model = auto.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    rows = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            enc = tok([text], truncation=True, max_length=tok.model_max_length, return_tensors="pt")
            rows.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0].tolist())
    out[folder] = {"logits": rows, "id2label": model.config.id2label, "max_length": tok.model_max_length}
print(json.dumps(out))
"""


def fresh_process(cwd: Path, texts: Path, folders: list[str], mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOADER, mode, str(texts), *folders],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_run_round_trips_through_the_standard_loaders_in_a_fresh_process(project, monkeypatch, tmp_path):
    """finetune.run for each run of params.yaml (tiny, 2 epochs); the trained classifier's logits on the test verses
    (the pipeline's) equal what transformers'/PEFT's Auto classes compute from the folder in a new process (cwd: the
    repo root; PEFT's base path is relative to it) and what load() computes from another cwd, to 1e-5; the labels
    equal predictions.jsonl's and specialist.predict's; every folder's card passes the metadata check."""
    monkeypatch.chdir(project)
    t = dataclasses.replace(load_params("finetune.train", TrainParams, ROOT / "params.yaml"), epochs=2, patience=1,
                            batch_size=4, eval_batch_size=8)  # fmt: skip
    trained = {}
    real_save = save_classifier

    def spy(model, path, info, base_path=None):  # the pipeline's own model, as it leaves training
        trained[path] = model
        real_save(model, path, info, base_path)

    monkeypatch.setattr("stages.finetune.save_classifier", spy)
    runs = every_run()
    assert {"scratch", "full", "lora", "freeze", "adapter", "ia3", "prompt_tuning", "prefix_tuning", "qlora", "minilm",
            "minilm_dapt"} <= set(runs)  # fmt: skip
    for name, r in runs.items():
        finetune_run(name, t, r, metrics_dir=Path("metrics/finetune"), checkpoints=Path("checkpoints/finetune"))
    models = {p.name[1:].rsplit(".tmp", 1)[0]: m for p, m in trained.items()}  # atomic_dir's .<run>.tmp<pid>
    test = Dataset.load_from_disk("data/3_tokenize/task/test")
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(list(test["text"])))
    folders = [f"models/7_finetune/{name}" for name in runs]
    at_root = fresh_process(project, texts, folders, "auto")
    elsewhere = fresh_process(tmp_path, texts, [str(project / f) for f in folders], "any-cwd")
    for name, r in runs.items():
        folder = f"models/7_finetune/{name}"
        tok_ids = json.loads(Path(folder, "tokenizer_config.json").read_text())
        model = models[name].eval()
        with torch.no_grad():  # the pipeline's logits: the trained classifier's, one verse at a time
            expected = torch.cat([model(*pad_batch([s], 0)).logits for s in _ids(folder, list(test["text"]))])
        for got in (at_root[folder], elsewhere[str(project / folder)]):
            torch.testing.assert_close(torch.tensor(got["logits"]), expected, atol=1e-5, rtol=0, msg=name)
        saved = [json.loads(line) for line in Path(folder, "predictions.jsonl").read_text().splitlines()]
        pipeline = [p["prediction"] for p in saved if p["split"] == "test"]
        assert torch.tensor(at_root[folder]["logits"]).argmax(-1).tolist() == pipeline, name
        assert [LABELS.index(p["label"]) for p in predict_texts(list(test["text"]), folder)] == pipeline, name
        assert at_root[folder]["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
        positions = model.body.config.max_position_embeddings - getattr(r.knobs, "num_virtual_tokens", 0)
        assert tok_ids["model_max_length"] == at_root[folder]["max_length"] == min(positions, 512), name
        assert check(Path(folder, "README.md").read_text()) == [], name
        assert not json.dumps(json.loads(Path(folder, "meta.json").read_text())).count(str(project)), name
    lora = json.loads(Path("models/7_finetune/lora/adapter_config.json").read_text())
    assert lora["base_model_name_or_path"] == "models/7_finetune/lora/base"  # relative: the same bytes in any clone
    same = [Path(f"models/7_finetune/{n}/base/model.safetensors").read_bytes() for n in ("lora", "ia3", "lora_bt")]
    assert same[0] == same[1] == same[2]  # one base, stored once by DVC
    four_bit = [Path(f"models/7_finetune/{n}/base/model.safetensors").read_bytes() for n in ("qlora", "qlora_bt")]
    assert four_bit[0] == four_bit[1] and len(four_bit[0]) < len(same[0])  # qlora's: its own 4-bit base, once
    shutil.rmtree("checkpoints", ignore_errors=True)


def _ids(folder: str, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok(texts, truncation=True, max_length=tok.model_max_length)["input_ids"]
