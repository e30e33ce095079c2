"""Checkpoints survive a kill at any point of their own writing."""

import shutil

import pytest
import torch

from stages.training import load_checkpoint, save_checkpoint


def parts(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def saved(path, step, seed=0):
    model, opt, sched = parts(seed)
    save_checkpoint(path, model, opt, sched, step, "fp")
    return model


@pytest.mark.parametrize("leftover", ["old_beside_new", "only_old", "tmp_half_written"])
def test_a_kill_inside_save_leaves_a_resumable_checkpoint(tmp_path, leftover):
    ckpt = tmp_path / "ckpt"
    first = saved(ckpt, 1, seed=1)
    old, tmp = tmp_path / "ckpt.old", tmp_path / "ckpt.tmp"
    if leftover == "old_beside_new":  # killed while removing `.old` after the second rename
        shutil.copytree(ckpt, old)
    elif leftover == "only_old":  # killed between the two renames
        ckpt.rename(old)
    else:  # killed while writing the temp folder
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"trunc")

    model, opt, sched = parts(seed=2)
    assert load_checkpoint(ckpt, model, opt, sched, "fp")["step"] == 1
    assert torch.equal(model.weight, first.weight)

    second = saved(ckpt, 2, seed=3)  # the next save succeeds and clears every leftover
    assert not old.exists() and not tmp.exists()
    model, opt, sched = parts(seed=4)
    assert load_checkpoint(ckpt, model, opt, sched, "fp")["step"] == 2
    assert torch.equal(model.weight, second.weight)


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_state"])
def test_a_corrupt_checkpoint_fails_naming_it_and_keeps_it(tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    saved(ckpt, 1)
    target = ckpt / ("model.safetensors" if damage == "truncated_weights" else "state.pt")
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2] if damage == "truncated_weights" else b"x")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    model, opt, sched = parts(seed=2)
    with pytest.raises(RuntimeError, match=rf"(?s){ckpt}: corrupt checkpoint .*delete it to start afresh"):
        load_checkpoint(ckpt, model, opt, sched, "fp")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing deleted behind the user's back
