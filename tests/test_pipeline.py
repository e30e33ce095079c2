"""The whole pipeline, the real config shrunk, through DVC in a temp git + DVC repo (a smoke run of every stage)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from datasets import load_from_disk

from specialist.card import check
from stages.apertium import PIVOTS
from stages.common import MEASURED
from tests.conftest import run


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_repro_runs_every_stage_and_writes_every_output(tiny_project):
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]
    dvc = yaml.safe_load((tiny_project / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    runs, baselines = params["finetune"]["runs"], params["baseline"]["runs"]
    expected = {name for name in dvc if name not in ("finetune", "baseline")}
    assert set(lock) == expected | {f"finetune@{r}" for r in runs} | {f"baseline@{r}" for r in baselines}
    for gate in ("raw", "ingest", "clean", "tokenize", "augment", "predictions"):
        assert json.loads((tiny_project / f"reports/gates/{gate}.json").read_text())["success"] is True
    task = load_from_disk(str(tiny_project / "data/3_tokenize/task"))
    for name in runs:  # one prediction per validation and test verse, as the predictions gate checked
        lines = (tiny_project / f"models/7_finetune/{name}/predictions.jsonl").read_text().splitlines()
        assert len(lines) == len(task["validation"]) + len(task["test"]), name
    metrics = json.loads((tiny_project / "metrics/evaluate.json").read_text())
    assert set(metrics["runs"]) == set(runs) | set(baselines)
    for name, r in metrics["runs"].items():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1, name
        assert len(r["per_class_f1"]) == 7
    assert metrics["runs"]["lora"]["trainable_params"] < 0.2 * metrics["runs"]["full"]["trainable_params"]
    assert metrics["runs"]["tfidf"]["chosen"]["C"] in params["baseline"]["train"]["C"]
    report = (tiny_project / "reports/evaluate.md").read_text()
    rows = {r.split(" | ")[0].lstrip("| ").split(" (collapsed")[0] for r in report.splitlines() if r.startswith("| ")}
    assert set(metrics["runs"]) <= rows  # a collapsed run keeps its row, marked
    assert f"- tfidf: C {metrics['runs']['tfidf']['chosen']['C']:g}, word n-grams" in report
    augment = json.loads((tiny_project / "metrics/augment.json").read_text())  # Apertium: one paraphrase per pivot
    assert augment["generated"] == 4 * augment["sources"] and 0 < augment["kept"] <= 2 * augment["sources"]
    assert set(augment["kept_per_pivot"]) <= set(PIVOTS)  # keep_per_verse 2 of 4 pivots: a pivot may keep none
    assert not (tiny_project / "models/5_translate").exists()  # the translate stage is the study's (study/dvc.yaml)
    for out in (
        "models/4_pretrain/model.safetensors",
        "data/6_augment",
        "models/7_finetune/lora/adapter_config.json",
        "models/7_baseline/tfidf_bt/model.safetensors",
    ):
        assert (tiny_project / out).exists(), out
    assert not (tiny_project / "checkpoints/pretrain").exists()
    released = json.loads((tiny_project / "metrics/release.json").read_text())  # the best run on validation
    assert released["released"] in runs and check((tiny_project / "models/release/README.md").read_text()) == []
    shown = run(["dvc", "metrics", "show", "--json"], tiny_project).stdout
    assert "val_perplexity" in shown and "macro_f1" in shown


def test_second_repro_is_a_no_op(tiny_project):
    out = run(["dvc", "repro"], tiny_project).stdout
    assert stages_run(out) == []
    assert "up to date" in out


def test_changing_a_finetune_param_reruns_only_finetune_its_gate_and_evaluate(tiny_project, tmp_path):
    project = tmp_path / "copy"
    shutil.copytree(tiny_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["train"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], project).stdout)
    downstream = {"gate_predictions", "evaluate", "release"}
    assert set(ran) == {f"finetune@{r}" for r in params["finetune"]["runs"]} | downstream


def without_measurements(path):
    """A metrics file or the report with the per-execution measurements (time, throughput, memory) taken out."""
    if path.suffix == ".md":  # the report's last column is train seconds
        return re.sub(r"\| [\d.]+ \|$", "| |", path.read_text(), flags=re.M)

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in MEASURED}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return strip(json.loads(path.read_text()))


def test_a_rerun_from_a_clean_workspace_gives_identical_artifacts(tiny_project, tmp_path):
    """Same commit, fresh clone and cache: every artifact byte-identical (equal dvc.lock hashes), and every
    metric equal except the measurements of the execution itself (MEASURED: seconds, throughput, memory)."""
    again = tmp_path / "again"
    run(["git", "clone", "-q", str(tiny_project), str(again)], tmp_path)
    run(["dvc", "repro"], again)
    first, second = (yaml.safe_load((p / "dvc.lock").read_text())["stages"] for p in (tiny_project, again))
    assert set(first) == set(second)
    measured = 0
    for stage, lock in first.items():
        hashes = {o["path"]: o["md5"] for o in second[stage].get("outs", [])}
        for out in lock.get("outs", []):
            if out["md5"] == hashes[out["path"]]:
                continue
            assert out["path"].startswith(("metrics/", "reports/evaluate.md")), f"{stage}: {out['path']} differs"
            a, b = (without_measurements(p / out["path"]) for p in (tiny_project, again))
            assert a == b, f"{stage}: {out['path']} differs beyond the measurements"
            measured += 1
    assert measured > 0  # the measurements do vary, so the comparison above was exercised


def test_a_second_repro_while_one_runs_fails_clearly_and_harms_nothing(tiny_project, tmp_path):
    """DVC's locks: the second `dvc repro` in the same workspace stops with a message naming the running one."""
    project = tmp_path / "copy"
    shutil.copytree(tiny_project, project, symlinks=True)

    def model_hash():
        outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["finetune@full"]["outs"]
        return next(o["md5"] for o in outs if o["path"] == "models/7_finetune/full")

    before = model_hash()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    first = subprocess.Popen(["dvc", "repro", "-f", "-s", "finetune@full"], cwd=project, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    for line in first.stdout:  # wait until it holds its locks and runs the stage
        if "Running stage" in line:
            break
    second = run(["dvc", "repro"], project, check=False)
    rest = first.stdout.read()
    assert first.wait() == 0, rest
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr and "dvc repro -f -s finetune@full" in second.stderr
    assert model_hash() == before  # the forced rerun reproduced the same model, byte for byte
    # nothing half-done: only evaluate reruns, because the run's measured seconds changed, and then all is current
    assert set(stages_run(run(["dvc", "repro"], project).stdout)) <= {"evaluate", "release"}
    assert stages_run(run(["dvc", "repro"], project).stdout) == []
