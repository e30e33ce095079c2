"""scripts.repro: the gates' share of a run is the gate_* stages' seconds over the whole run's."""

from scripts.repro import gate_overhead


def test_gate_overhead_sums_gate_stages_only():
    times = {"ingest": 1.0, "gate_ingest": 2.0, "finetune@full": 6.0, "gate_predictions": 1.0}
    assert gate_overhead(times, total=20.0) == {"gate_seconds": 3.0, "gate_share": 0.15}
    assert gate_overhead({}, total=0.0) == {"gate_seconds": 0, "gate_share": 0.0}
