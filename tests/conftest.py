"""Shared test setup: offline, quiet, and a copy of this project in a temp git + DVC repo, shrunk to tiny sizes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# No network, no telemetry, no progress bars: set before any stage imports a library.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(key, value)

# One literal verse per genre (label index -> text), for stage tests that need a tiny labeled task.
VERSES = {
    0: "Moses commanded the law and the statutes of the covenant",
    1: "the king reigned in Jerusalem and fought the Philistines",
    2: "my soul waits for the Lord in the night; wisdom is better than gold",
    3: "thus says the Lord to the house of Israel; woe to the nations",
    4: "Jesus said to his disciples, follow me",
    5: "grace to you and peace from God our Father, brothers",
    6: "I saw a beast rising out of the sea with seven heads",
}

# The real config shrunk (torchtune style): same stages and code paths, tiny model, few steps.
TINY = {
    "ingest.train_per_class": 8,
    "ingest.eval_per_class": 10,
    "ingest.test_per_class": 10,
    "tokenize.vocab_size": 512,
    "tokenize.block_size": 64,
    "tokenize.max_length": 48,
    "pretrain.n_layer": 2,
    "pretrain.n_embd": 64,
    "pretrain.n_head": 2,
    "pretrain.max_steps": 4,
    "pretrain.warmup_steps": 1,
    "pretrain.batch_size": 8,
    "pretrain.eval_every": 2,
    "pretrain.eval_batches": 2,
    "pretrain.checkpoint_every": 2,
    "translate.d_model": 32,
    "translate.ffn_dim": 64,
    "translate.layers": 1,
    "translate.heads": 2,
    "translate.vocab_size": 512,
    "translate.max_steps": 3,
    "translate.eval_pairs": 4,
    "augment.num_paraphrases": 1,
    "augment.pivot_beams": 1,
    "augment.max_length": 24,
    "finetune.train.epochs": 2,
    "finetune.train.patience": 1,
    "tokenize_dapt.block_size": 64,  # study/dvc.yaml's DAPT of the real MiniLM: a few steps
    "dapt.max_steps": 2,
    "dapt.warmup_steps": 1,
    "dapt.batch_size": 4,
    "dapt.eval_every": 2,
    "dapt.eval_batches": 1,
    "baseline.extra_runs.setfit.setfit.num_iterations": 1,
}


def set_dotted(params: dict, key: str, value, preset: dict | None = None) -> None:
    """params[a][b][c] = value for key 'a.b.c'. A key params.yaml leaves to its preset (`preset`: the preset file's
    mapping) is added to params.yaml's section, as `dvc exp run -S '+clean...'` adds it, and wins over the preset."""
    node, default = params, preset or {}
    *parents, leaf = key.split(".")
    for k in parents:
        default = default.get(k) if isinstance(default, dict) else None
        if k not in node and isinstance(default, dict):
            node[k] = {}
        node = node[k]
    if leaf not in node and not (isinstance(default, dict) and leaf in default):
        raise KeyError(f"tiny override {key!r} names no key of params.yaml or its preset")
    node[leaf] = value


def tiny_params(overrides: dict | None = None) -> dict:
    """params.yaml with the TINY overrides (and any more) applied; an override of an unknown key fails. A `preset`
    override is applied first, so that the other overrides may name its keys."""
    from stages.presets import read_preset

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = {**TINY, **(overrides or {})}
    params["preset"] = overrides.pop("preset", params["preset"])
    preset = read_preset(params["preset"], ROOT / "params.yaml")
    for key, value in overrides.items():
        set_dotted(params, key, value, preset)
    return params


def write_params(folder: Path, params: dict) -> Path:
    """folder/params.yaml holding `params`, with this project's presets beside it (params/presets), as stages read
    them; returns the params file."""
    shutil.copytree(ROOT / "params/presets", folder / "params/presets", dirs_exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def project_files() -> list[str]:
    """The files of this project as git sees them (tracked, and new but not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    # the results of this checkout's own run stay behind: the copy makes its own
    return [
        f
        for f in out.stdout.splitlines()
        if (ROOT / f).is_file() and not f.startswith(("metrics/", "reports/", "dvc.lock"))
    ]


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """A copy of this project at `dest`: its own git repo and DVC cache, tiny params, committed."""
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    write_params(dest, tiny_params(overrides))
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@example.invalid"], dest)
    run(["git", "config", "user.name", "test"], dest)
    if not (dest / ".dvc").exists():
        run(["dvc", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny project"], dest)
    return dest


FAULT_ROWS = pytest.StashKey[list]()


@pytest.fixture
def fault_matrix(request) -> list[dict]:
    """Where the gate fault tests record one row each; the rows are printed at the end of the run."""
    return request.config.stash.setdefault(FAULT_ROWS, [])


def pytest_terminal_summary(terminalreporter, config):
    """The fault matrix of the faults that ran (tests/fault_matrix.py), after pytest's own summary."""
    if rows := config.stash.get(FAULT_ROWS, []):
        from tests.fault_matrix import report

        report(rows, terminalreporter.write_line)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A tiny project whose pipeline has been reproduced once (shared by the tests that only read it)."""
    dest = make_project(tmp_path_factory.mktemp("project"))
    run(["dvc", "repro"], dest)
    return dest


def write_tiny_blocks(root: Path, verses: int, block_size: int, validation: int):
    """What pretrain reads, in root/blocks and root/tokenizer: a 300-token BPE trained on the first `verses` WEB
    verses, which are packed into blocks of block_size; the first `validation` blocks are the validation split."""
    from datasets import Dataset, DatasetDict

    from stages.ingest import read_raw
    from stages.tokenize import pack, train_tokenizer

    texts = [r["text"] for r in read_raw(ROOT / "data/raw/web.jsonl.gz")[:verses]]
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=2)
    blocks = pack(tok(texts, add_special_tokens=False)["input_ids"], block_size, tok.eos_token_id)
    splits = {"train": blocks[validation:], "validation": blocks[:validation]}
    DatasetDict({k: Dataset.from_dict({"input_ids": v}) for k, v in splits.items()}).save_to_disk(root / "blocks")
    tok.save_pretrained(root / "tokenizer")
    return tok
