"""The whole pipeline, the real config shrunk, through DVC in a temp git + DVC repo (a smoke run of every stage)."""

import json
import re
import shutil

import yaml

from tests.conftest import run


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_repro_runs_every_stage_and_writes_every_output(tiny_project):
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]
    dvc = yaml.safe_load((tiny_project / "dvc.yaml").read_text())["stages"]
    runs = yaml.safe_load((tiny_project / "params.yaml").read_text())["finetune"]["runs"]
    expected = {name for name in dvc if name != "finetune"} | {f"finetune@{r}" for r in runs}
    assert set(lock) == expected
    for gate in ("ingest", "clean", "tokenize", "augment"):
        assert json.loads((tiny_project / f"reports/gates/{gate}.json").read_text())["success"] is True
    metrics = json.loads((tiny_project / "metrics/evaluate.json").read_text())
    assert set(metrics["runs"]) == set(runs)
    for name, r in metrics["runs"].items():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1, name
        assert len(r["per_class_f1"]) == 7
    assert metrics["runs"]["lora"]["trainable_params"] < 0.2 * metrics["runs"]["full"]["trainable_params"]
    assert "| lora |" in (tiny_project / "reports/evaluate.md").read_text()
    for out in (
        "models/4_pretrain/model.safetensors",
        "models/5_translate",
        "data/6_augment",
        "models/7_finetune/lora/body/adapter_config.json",
    ):
        assert (tiny_project / out).exists(), out
    assert not (tiny_project / "checkpoints/pretrain").exists()
    shown = run(["dvc", "metrics", "show", "--json"], tiny_project).stdout
    assert "val_perplexity" in shown and "macro_f1" in shown


def test_second_repro_is_a_no_op(tiny_project):
    out = run(["dvc", "repro"], tiny_project).stdout
    assert stages_run(out) == []
    assert "up to date" in out


def test_changing_a_finetune_param_reruns_only_finetune_and_evaluate(tiny_project, tmp_path):
    project = tmp_path / "copy"
    shutil.copytree(tiny_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["train"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], project).stdout)
    assert set(ran) == {f"finetune@{r}" for r in params["finetune"]["runs"]} | {"evaluate"}
