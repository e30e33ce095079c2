"""bench.pretrain_recipe: a cell is measured once; a rerun adds only the fine-tuning runs it lacks, and a changed
pre-training is measured afresh; the markdown has a row per cell."""

import json

import bench.pretrain_recipe as recipe


def test_cells_resume_and_remeasure_only_what_changed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(recipe, "REPORT", tmp_path / "r.json")
    monkeypatch.setattr(recipe, "WORK", tmp_path / "work")
    monkeypatch.setattr(recipe, "cell_params", lambda spec: None)
    q = {"optimizer": "muon", "lr": 6e-3, "schedule": "cosine", "max_steps": 250, "batch_size": 32}
    monkeypatch.setattr("dataclasses.asdict", lambda p: q)
    monkeypatch.setattr(recipe, "pretrain_cell", lambda name, cell: calls.append(name) or {"val_perplexity": 50.0})

    def finetune(name, cell, ft):
        calls.append(recipe.ft_key(ft))
        return {"run": recipe.ft_key(ft), **ft, "lr": 3e-4, "best_val_accuracy": 0.5}

    monkeypatch.setattr(recipe, "finetune_cell", finetune)
    ft = [{"pooling": "mean", "lr_scale": 0.1, "seed": 0}]
    cell = {"pretrain": {"lr": 3e-3}, "finetune": ft, "note": "lr"}

    def measure(c):
        recipe.run_cell("a", c, recipe.update_report("a", {})["cells"])

    measure(cell)
    assert calls == ["a", "full_mean_x0.1_s0"]
    measure(cell)  # everything there: nothing runs
    more = {**cell, "finetune": ft + [{"pooling": "last", "lr_scale": 0.1, "seed": 1}]}
    measure(more)
    assert calls == ["a", "full_mean_x0.1_s0", "full_last_x0.1_s1"]  # only the new fine-tuning run
    measure({**more, "pretrain": {"lr": 6e-3}})  # another pre-training: all of it again
    assert calls[3:] == ["a", "full_mean_x0.1_s0", "full_last_x0.1_s1"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cells"]["a"]["spec"]["pretrain"] == {"lr": 6e-3} and len(report["cells"]["a"]["finetune"]) == 2
    table = recipe.markdown(report)
    assert "| a | lr | muon 0.006, cosine, 250 x 32, all |  | 50.0 |  |" in table
    assert "full last lr 3e-04 s1: **0.500**" in table
