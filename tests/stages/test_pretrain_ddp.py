"""pretrain under torchrun: 2 CPU processes (DDP, gloo) train what 1 process trains with the same global batch."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_tiny_blocks

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import dataclasses, sys
    from pathlib import Path
    import torch.distributed as dist
    from stages.common import load_params
    from stages.pretrain import PretrainParams, run
    root, out, objective = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    p = dataclasses.replace(load_params("pretrain", PretrainParams), objective=objective, n_layer=2, n_embd=32,
        n_head=2, dropout=0.0, max_steps=4, warmup_steps=1, batch_size=8, grad_accum=2, eval_every=1, eval_batches=2,
        checkpoint_every=0)
    m = run(p, blocks=root / "blocks", tokenizer_dir=root / "tokenizer", out=out / "model",
            metrics_path=out / "m.json", live_dir=out / "live", ckpt=out / "ckpt")
    print("metrics", m)
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_tiny_blocks(root, verses=600, block_size=16, validation=16)
    (root / "driver.py").write_text(DRIVER)
    return root


def losses(out: Path, name: str) -> list[tuple[int, float]]:
    rows = (out / "live/plots/metrics" / name / "loss.tsv").read_text().splitlines()[1:]
    return [(int(r.split("\t")[0]), float(r.split("\t")[1])) for r in rows]


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_two_processes_match_one_with_the_same_global_batch(root, tmp_path, objective):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, str(root / "driver.py"), str(root), str(tmp_path / "one"), objective],
                         cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(root / "driver.py"), str(root), str(tmp_path / "two"), objective],
                         cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("metrics {}") == 1 and "'processes': 2" in two.stdout  # rank 1 wrote nothing

    for name in ("train", "val"):
        a, b = losses(tmp_path / "one", name), losses(tmp_path / "two", name)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
        assert a[0][1] != a[-1][1]  # it trained
        for (_, x), (_, y) in zip(a, b, strict=True):
            assert abs(x - y) < 1e-5, (name, a, b)
    w1, w2 = (load_file(str(tmp_path / run / "model/model.safetensors")) for run in ("one", "two"))
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
