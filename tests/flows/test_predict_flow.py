"""The predict flow (deployment predict/batch) against a real Prefect server: it classifies a file with the command
a user types, publishes the label counts, and fails with predict's own message on bad input."""

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.predict import predict as predict_flow
from specialist.predict import predict
from tests.stages.test_predict import TEXTS, save_tiny_model

REPO = Path(__file__).resolve().parents[2]


def test_the_flow_classifies_a_file_and_publishes_the_label_counts(prefect_server, tmp_path):
    model = save_tiny_model(tmp_path / "release")
    (tmp_path / "new.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out.jsonl"
    state = predict_flow(str(tmp_path / "new.txt"), str(out), str(model), root=REPO, return_state=True)
    assert state.is_completed(), state.message
    counts = state.result()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in predict(TEXTS, model)]
    assert counts["texts"] == 4 and counts["out"] == str(out)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    [table] = [a for a in artifacts if a.key == "predict-labels"]
    labels = {r["label"]: r["texts"] for r in json.loads(table.data)}
    assert sum(labels.values()) == 4 and labels == counts["labels"]


def test_bad_input_fails_the_flow_with_predicts_one_line(prefect_server, tmp_path):
    model = save_tiny_model(tmp_path / "release")
    (tmp_path / "a.csv").write_text("id,review\n1,good\n")
    state = predict_flow(str(tmp_path / "a.csv"), str(tmp_path / "o.jsonl"), str(model), root=REPO,
                         return_state=True)  # fmt: skip
    assert state.is_failed() and "no column 'text' (--column)" in state.message
