"""The flow on this project's own dvc.yaml (the real config shrunk), against a real Prefect server."""

import shutil
from pathlib import Path

import yaml

from flows.pipeline import stage_order
from tests.flows.test_pipeline_flow import run_flow, task_runs


def test_flow_reruns_what_a_finetune_change_touches_and_publishes_the_report(prefect_server, tiny_project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(tiny_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["train"]["epochs"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state, flow_run_id = run_flow(root)
    assert state.is_completed(), state.message
    verdicts = state.result()
    order = stage_order(root)
    assert list(verdicts) == order and order[0] == "gate_raw" and order[-2:] == ["evaluate", "release"]
    gates = {f"gate_{g}" for g in ("raw", "ingest", "clean", "tokenize", "augment", "predictions")}
    assert gates <= set(order) and order.index("gate_predictions") == len(order) - 3  # right before evaluate
    rerun = {s for s, v in verdicts.items() if v == "reproduced"}
    assert rerun == {f"finetune@{r}" for r in params["finetune"]["runs"]} | {"gate_predictions", "evaluate", "release"}
    runs = task_runs(flow_run_id, len(order))
    assert [r.name for r in runs] == order
    assert (Path(root) / "reports/evaluate.md").exists() and (Path(root) / "models/release/README.md").exists()
