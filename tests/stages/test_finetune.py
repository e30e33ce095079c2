"""finetune + evaluate: each method trains what it should, saves in its format, and reloads to the same predictions."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict

from stages import gate
from stages.common import ParamsError, load_params
from stages.evaluate import EvaluateParams
from stages.evaluate import run as evaluate_run
from stages.finetune import (
    AUGMENT,
    PRETRAINED,
    TASK,
    TOKENIZER,
    RunParams,
    TrainParams,
    build_classifier,
    classifier_info,
    load_classifier,
    predict,
    save_classifier,
)
from stages.finetune import run as finetune_run
from stages.ingest import LABELS
from stages.methods import LoraParams, PromptTuningParams
from stages.pretrain import PretrainParams, build_model
from stages.suites import PredictionsGateParams
from stages.tokenize import train_tokenizer
from stages.training import count_params
from tests.conftest import VERSES, tiny_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    texts = list(VERSES.values()) * 30
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    tok.save_pretrained(root / "tokenizer")
    pre = dataclasses.replace(
        load_params("pretrain", PretrainParams, ROOT / "params.yaml"), n_layer=2, n_embd=32, n_head=2
    )
    model = build_model(pre, tok, 64)
    model.save_pretrained(root / "pretrained")
    tok.save_pretrained(root / "pretrained")
    (root / "pretrained/meta.json").write_text(json.dumps({"params": dataclasses.asdict(pre)}))
    rows = [{"input_ids": tok.encode(t + s), "label": y} for y, t in VERSES.items() for s in ("", ".", "!", " now")]
    rows = [{**r, "book": "Gen", "chapter": 1, "verse": i + 1} for i, r in enumerate(rows)]  # the verse key
    split = Dataset.from_list(rows).cast_column("label", ClassLabel(names=LABELS))
    DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(root / "task")
    Dataset.from_list([{"text": VERSES[0] + " again", "label": 0}]).save_to_disk(root / "augment")
    return root


def params(**kw):
    t = dataclasses.replace(load_params("finetune.train", TrainParams, ROOT / "params.yaml"), epochs=3, patience=2)
    lora = LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"])
    runs = {
        "scratch": RunParams(init="scratch", method="full", lr_scale=1.0, augmented=False),
        "full": RunParams(init="pretrained", method="full", lr_scale=0.1, augmented=False),
        "lora": RunParams(init="pretrained", method="lora", lr_scale=1.0, augmented=False, lora=lora),
        "full_bt": RunParams(init="pretrained", method="full", lr_scale=0.1, augmented=True),
    }
    return t, runs


def test_lora_trains_only_adapters_and_head(workspace):
    t, runs = params()
    model = build_classifier(runs["lora"], workspace / "pretrained", 7, t)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "head" in n for n in trainable)
    n_trainable, total = count_params(model)
    assert n_trainable < 0.2 * total
    full = build_classifier(runs["full"], workspace / "pretrained", 7, t)
    assert count_params(full)[0] == count_params(full)[1]


def test_pretrained_init_loads_the_body_and_scratch_does_not(workspace):
    t, runs = params()
    pre = build_classifier(runs["full"], workspace / "pretrained", 7, t)
    scratch = build_classifier(runs["scratch"], workspace / "pretrained", 7, t)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(workspace / "pretrained")
    w = lm.transformer.h[0].attn.c_attn.weight
    assert torch.equal(pre.body.h[0].attn.c_attn.weight, w)
    assert not torch.equal(scratch.body.h[0].attn.c_attn.weight, w)


@pytest.mark.parametrize("pooling", ["mean", "last", "mean_last"])
def test_pooling_reads_the_verse_and_ignores_padding(workspace, tmp_path, pooling):
    """mean averages the real tokens, last takes the last real one, mean_last both side by side (a 2H-wide head); the
    pads right of a verse change nothing, and a saved classifier reloads with its pooling."""
    t, runs = params()
    clf = build_classifier(runs["full"], workspace / "pretrained", 7, dataclasses.replace(t, pooling=pooling)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 1, 1], [9, 10, 11, 12, 13, 14]])  # (B, T): the first verse padded with id 1
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    h = clf.body(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    mean = torch.stack([h[0, :4].mean(0), h[1].mean(0)])
    last = torch.stack([h[0, 3], h[1, 5]])
    pooled = {"mean": mean, "last": last, "mean_last": torch.cat([mean, last], -1)}[pooling]
    logits = clf(input_ids=ids, attention_mask=mask).logits
    assert clf.head.in_features == h.shape[-1] * (2 if pooling == "mean_last" else 1)
    assert torch.allclose(logits, clf.head(pooled), atol=1e-5)
    alone = clf(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits  # the same verse without its pads
    assert torch.allclose(logits[:1], alone, atol=1e-5)
    save_classifier(clf, tmp_path, classifier_info(runs["full"], LABELS, pooling, workspace / "pretrained"))
    assert torch.allclose(load_classifier(tmp_path)(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-6)


def test_each_run_saves_in_its_format_and_evaluates(workspace, tmp_path):
    t, runs = params()
    out = tmp_path / "runs"
    infos = {}
    for name, r in runs.items():
        paths = {
            "task_dir": workspace / "task",
            "tokenizer_dir": workspace / "tokenizer",
            "out": out,
            "metrics_dir": tmp_path / "metrics",
            "checkpoints": tmp_path / "checkpoints",
        }
        infos[name] = finetune_run(
            name, t, r, pretrained=workspace / "pretrained", augment_dir=workspace / "augment", **paths
        )
    assert (out / "lora/adapter_config.json").exists() and (out / "lora/adapter_model.safetensors").exists()
    assert (out / "lora/base/model.safetensors").exists() and (out / "full/model.safetensors").exists()
    assert (out / "full/README.md").exists() and (out / "lora/README.md").exists()
    assert infos["full_bt"]["train_examples"] == infos["full"]["train_examples"] + 1
    assert infos["full"]["lr"] == pytest.approx(0.1 * load_params("pretrain", PretrainParams, ROOT / "params.yaml").lr)
    # the saved adapter reloads on the base model and predicts what the best checkpoint predicted
    model = load_classifier(out / "lora")
    seqs = [r for r in Dataset.load_from_disk(str(workspace / "task/test"))["input_ids"]]
    preds = predict(model, seqs, 1, 8)
    accuracy = sum(p == y for p, y in zip(preds, [i // 4 for i in range(28)], strict=True)) / 28
    assert accuracy == pytest.approx(json.loads((out / "lora/meta.json").read_text())["counts"]["best_val_accuracy"])

    # each run's predictions.jsonl passes the predictions gate, and evaluate scores it
    summary = gate.check("predictions", PredictionsGateParams(), runs=list(runs), models=out,
                         task=workspace / "task")  # fmt: skip
    assert summary["success"], gate.failure_message(summary)
    metrics = evaluate_run(EvaluateParams(split="test"), list(runs), task_dir=workspace / "task",
                           models=out, metrics_path=tmp_path / "e.json", report_path=tmp_path / "e.md",
                           finetune_metrics=tmp_path / "metrics", plots=tmp_path / "plots")  # fmt: skip
    assert set(metrics["runs"]) == set(runs)
    for run in runs:  # for `dvc plots`: a confusion matrix (a row per test verse) and the validation curve per run
        rows = (tmp_path / "plots" / "confusion" / f"{run}.csv").read_text().splitlines()
        assert rows[0] == "actual,predicted" and len(rows) == 1 + metrics["examples"]
        curve = (tmp_path / "plots" / "curves" / f"{run}.csv").read_text().splitlines()
        assert curve[0] == "epoch,train_loss,val_accuracy" and len(curve) > 1
    assert metrics["runs"]["lora"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)  # rounded to 4 places
    lo, hi = metrics["runs"]["lora"]["accuracy_ci95"]
    assert lo <= metrics["runs"]["lora"]["accuracy"] <= hi and metrics["clusters"] >= 1
    assert "## The field's claims, decided by the interval of the gap" in (tmp_path / "e.md").read_text()


def test_virtual_tokens_that_leave_no_room_for_the_longest_verse_fail_naming_the_key(workspace, tmp_path):
    t, _ = params()
    r = RunParams(init="pretrained", method="prompt_tuning", lr_scale=1.0, augmented=False,
                  prompt_tuning=PromptTuningParams(num_virtual_tokens=60, init="random"))  # fmt: skip
    paths = {"task_dir": workspace / "task", "tokenizer_dir": workspace / "tokenizer", "out": tmp_path,
             "checkpoints": tmp_path / "checkpoints"}  # fmt: skip
    with pytest.raises(ParamsError, match=r"prompt_tuning\.num_virtual_tokens: 60 virtual \+ \d+ verse tokens exceed"):
        finetune_run("p", t, r, pretrained=workspace / "pretrained", augment_dir=workspace / "augment", **paths)


@pytest.fixture(scope="module")
def project(workspace, tmp_path_factory):
    """A directory laid out as the pipeline's for `python -m stages.finetune`: the workspace's inputs at the stage's
    default paths, and params.yaml with enough epochs (and patience) that a kill lands mid-run."""
    root = tmp_path_factory.mktemp("ft_project")
    for src, dest in [("task", TASK), ("tokenizer", TOKENIZER), ("pretrained", PRETRAINED), ("augment", AUGMENT)]:
        shutil.copytree(workspace / src, root / dest)
    params = tiny_params({"finetune.train.epochs": 40, "finetune.train.patience": 40, "finetune.train.batch_size": 4})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def start_finetune(cwd: Path, run: str = "full") -> subprocess.Popen:
    """`python -m stages.finetune <run>` in `cwd`, with this checkout's stages (`cwd` holds only data and params).

    One thread: the tiny model's steps are so short that two threads on a busy 2-core machine wait more than they
    compute (a run takes 10 s instead of 90). Both runs compared use the same setting.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.finetune", run], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def test_killed_run_resumes_to_identical_outputs(project, tmp_path):
    """kill -9 after the first epoch's checkpoint, rerun: the same predictions and head, byte for byte, as a run that
    was never interrupted; the killed run left no output folder, and the finished one leaves no checkpoint."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        shutil.copytree(project, d)
    proc = start_finetune(straight)
    assert proc.wait() == 0, proc.stdout.read()

    proc = start_finetune(killed)
    ckpt, out = killed / "checkpoints/finetune/full", killed / "models/7_finetune/full"
    deadline = time.time() + 120
    while not (ckpt / "checkpoint.json").exists():
        assert proc.poll() is None and time.time() < deadline, "finished before a checkpoint could be killed"
        assert not out.exists()  # never an output folder before training is done
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = next(p for p in (ckpt, ckpt.with_name("full.old")) if (p / "checkpoint.json").exists())  # .old: killed
    epochs_done = json.loads((last / "checkpoint.json").read_text())["step"]  # between save_checkpoint's renames
    assert 1 <= epochs_done < 40
    assert not out.exists() and not (killed / "metrics/finetune/full.json").exists()

    proc = start_finetune(killed)
    log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert f"resuming at step {epochs_done}" in log
    assert f"epoch {epochs_done}/40" not in log and f"epoch {epochs_done + 1}/40" in log  # no epoch trained twice
    for name in ("predictions.jsonl", "model.safetensors", "config.json", "meta.json", "README.md"):
        a, b = (d / "models/7_finetune/full" / name for d in (straight, killed))
        assert a.read_bytes() == b.read_bytes(), f"{name} differs after the resume"
    assert not (killed / "checkpoints/finetune/full").exists()  # removed once the output is written
    assert not list((killed / "models/7_finetune").glob(".full.tmp*"))  # no temp folder left beside the output
