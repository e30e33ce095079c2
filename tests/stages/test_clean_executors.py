"""clean on real clusters: its Ray and Slurm executors run on a Ray head and a one-node Slurm started here on
127.0.0.1 (bench/clusters.py; stopped after), and write the bytes the local executor writes (tests/stages/
test_clean.py builds them only).
A failed Ray task or Slurm job stops the run with an error instead of leaving the next step waiting for ever.
"""

import dataclasses
import getpass
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, load_from_disk

from bench.clean_executors import without_measurements
from bench.clusters import ray_head, slurm_local
from stages.clean import IN, CleanParams, executor, pipelines
from tests.stages.test_clean import ROOT, P, clean_corpus, dedup_docs

SHARDED = dict(tasks=3, workers=2)  # the settings of test_several_tasks_and_workers_give_byte_identical_output


def docs() -> list[dict]:
    """dedup_docs twice, the copies in other shards than their originals: dedup works across tasks."""
    return dedup_docs() + [{"id": f"{d['id']}#2", "text": d["text"]} for d in dedup_docs()]


def assert_same_output(got: tuple[dict, Path], expected: tuple[dict, Path]):
    """The same rows, every file but meta.json (it holds the params: the executor) byte for byte, equal metrics."""
    (metrics, out), (ref_metrics, ref) = got, expected
    assert load_from_disk(str(out / "corpus"))[:] == load_from_disk(str(ref / "corpus"))[:]
    files = sorted(f.relative_to(ref) for f in ref.rglob("*") if f.is_file() and f.name != "meta.json")
    assert sorted(f.relative_to(out) for f in out.rglob("*") if f.is_file() and f.name != "meta.json") == files
    assert [(f, (out / f).read_bytes() == (ref / f).read_bytes()) for f in files] == [(f, True) for f in files]
    assert without_measurements(metrics) == without_measurements(ref_metrics)
    assert metrics["documents_out"] == 3  # web/Gen.1, web/Gen.2, kjv/Gen.1


def run_in_child(p: CleanParams, src: Path, tmp: Path, timeout: float) -> subprocess.CompletedProcess | None:
    """stages.clean.run_datatrove(p, src, tmp/work) in a child process; None if it still runs after `timeout` s."""
    (tmp / "params.yaml").write_text(yaml.safe_dump({"clean": dataclasses.asdict(p)}))
    code = ("import sys; from pathlib import Path; from stages.clean import CleanParams, run_datatrove; "
            "from stages.common import load_params; params, src, work = map(Path, sys.argv[1:]); "
            "run_datatrove(load_params('clean', CleanParams, params), src, work)")  # fmt: skip
    cmd = [sys.executable, "-c", code, str(tmp / "params.yaml"), str(src), str(tmp / "work")]
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture(scope="module")
def local_output(tmp_path_factory) -> tuple[dict, Path]:
    """The local executor's metrics and output folder, with the sharded settings: what the clusters must match."""
    return clean_corpus(docs(), tmp_path_factory.mktemp("local"), dataclasses.replace(P, **SHARDED))


@pytest.fixture(scope="module")
def ray_address():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the `ray` package is not installed: pip install -e '.[ray]' (make installs it)")
    with ray_head(num_cpus=2) as address:
        yield address


@pytest.fixture
def ray_params(ray_address, monkeypatch) -> CleanParams:
    monkeypatch.setenv("RAY_ADDRESS", ray_address)  # the cluster ray.init() finds, in the stage and its children
    return dataclasses.replace(P, executor="ray", **SHARDED, ray=dataclasses.replace(P.ray, mem_per_cpu_gb=0.5))


@pytest.fixture(scope="module")
def slurm_conf():
    binaries = ("slurmctld", "slurmd", "munged", "sbatch")
    if not all(map(shutil.which, binaries)) and (os.geteuid() != 0 or not shutil.which("apt-get")):
        pytest.skip(f"{'/'.join(binaries)} not installed and not root with apt-get (apt-get install slurm-wlm munge)")
    with slurm_local() as conf:
        yield conf


@pytest.fixture
def slurm_params(slurm_conf, monkeypatch) -> CleanParams:
    """Slurm params for the local cluster; each job sources this venv and imports this checkout's stages."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)  # sbatch exports the environment (--export=ALL) to the jobs
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    venv = Path(sys.executable).parent / "activate"
    slurm = dataclasses.replace(P.slurm, partition="cpu", time="00:30:00", mem_per_cpu_gb=1,
                                venv_path=str(venv) if venv.exists() else None)  # fmt: skip
    return dataclasses.replace(P, executor="slurm", **SHARDED, slurm=slurm)


@pytest.mark.slow
def test_ray_executor_writes_the_local_executors_bytes(local_output, ray_params, tmp_path):
    """Every pipeline as Ray tasks (3 shards, 2 at a time) on a local head with 2 CPUs."""
    assert_same_output(clean_corpus(docs(), tmp_path, ray_params), local_output)


@pytest.mark.slow
def test_ray_tasks_find_a_corpus_given_by_a_relative_path(ray_params, tmp_path, monkeypatch):
    """`python -m stages.clean` passes data/1_ingest/corpus; Ray runs tasks in the folder its raylet started in.
    The first pipeline only: after a failed Ray task the next pipeline would wait for ever (the test below)."""
    Dataset.from_list(docs()[:2]).save_to_disk(tmp_path / IN)
    monkeypatch.chdir(tmp_path)
    name, pipeline, tasks = pipelines(ray_params, IN, tmp_path / "work")[0]
    ex = executor(ray_params, name, pipeline, tasks, tmp_path / "work" / "logs")
    ex.run()
    assert ex.get_incomplete_ranks() == []


@pytest.mark.slow
def test_a_failed_ray_task_stops_the_run_with_an_error(ray_params, tmp_path):
    done = run_in_child(ray_params, tmp_path / "missing", tmp_path, timeout=120)
    assert done is not None, "still waiting after 120 s"
    assert done.returncode == 1 and "error: clean: pipeline filter: task(s) [0, 1, 2] of 3 failed" in done.stderr


@pytest.mark.slow
def test_slurm_executor_writes_the_local_executors_bytes(local_output, slurm_params, tmp_path):
    """One array job per pipeline (3 tasks), chained by --dependency, on a one-node cluster; work_dir on local disk."""
    p = dataclasses.replace(slurm_params, work_dir=str(tmp_path))
    assert_same_output(clean_corpus(docs(), tmp_path, p), local_output)


@pytest.mark.slow
def test_a_failed_slurm_job_stops_the_run_with_an_error(slurm_params, slurm_conf, tmp_path):
    try:
        done = run_in_child(slurm_params, tmp_path / "missing", tmp_path, timeout=150)
    finally:
        subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True)  # this cluster's jobs only
    assert done is not None, "still waiting after 150 s"
    assert done.returncode == 1 and "error: clean: the Slurm job of pipeline filter failed" in done.stderr
