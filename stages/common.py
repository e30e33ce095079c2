"""Leaf helpers shared by the stages: params loading, atomic writes, metadata, seeding.

Only small, stage-agnostic pieces live here (see STYLE.md: share leaf helpers, not a framework).
"""

import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import types
import typing
from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml section that does not match its dataclass; the message names the file and key."""


def _check_type(value, hint, where: str):
    """Value converted to `hint`, or ParamsError naming `where`. Ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        if len(args) == 1:  # Optional[X]: X's own error is the useful one
            return _check_type(value, args[0], where)
        for arg in typing.get_args(hint):
            if arg is not type(None):
                try:
                    return _check_type(value, arg, where)
                except ParamsError:
                    pass
        raise ParamsError(f"{where}: expected {hint}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(hint) or (typing.Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        _, arg = typing.get_args(hint) or (str, typing.Any)
        return {k: _check_type(v, arg, f"{where}.{k}") for k, v in value.items()}
    if hint is typing.Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ParamsError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data, where: str):
    """Build dataclass `cls` from a mapping; unknown, missing or mistyped keys fail with the key's name."""
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {', '.join(unknown)}; expected: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {name: _check_type(data[name], hints[name], f"{where}.{name}") for name in fields if name in data}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        for problem in check():
            raise ParamsError(f"{where}.{problem}")
    return obj


def load_params(section: str, cls, path: Path = PARAMS_FILE):
    """The `section` of params.yaml as a frozen dataclass `cls` (a dotted section reads a nested key)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    node = data
    for key in section.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"{path}: missing section {section!r} (no key {key!r})")
        node = node[key]
    return from_dict(cls, node, f"{path}: {section}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; CPU kernels are deterministic, so runs repeat bit for bit."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(obj, path: Path) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class atomic_dir:
    """Context manager giving a temp folder that replaces `path` only when the block succeeds.

    with atomic_dir(Path("models/4_pretrain")) as tmp: model.save_pretrained(tmp)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return False


# Measurements of one execution (time, throughput, memory): they vary from run to run, so they go to metrics and
# never into an artifact, which keeps the artifacts of the same inputs and params byte-identical (and their
# dvc.lock hashes equal) from one run to the next.
MEASURED = frozenset(
    {"train_seconds", "seconds", "tokens_per_second", "sentences_per_second", "peak_memory_mb", "translation_cache"}
)


def meta(params, /, **counts) -> dict:
    """What an artifact's meta.json holds: params used, counts (measurements left out), library versions.

    No git revision: the commit that holds dvc.lock records where an artifact came from.
    """
    import importlib.metadata as md

    versions = {}
    for pkg in ["torch", "transformers", "datasets", "tokenizers", "peft", "scikit-learn"]:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {
        "params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params,
        "counts": {k: v for k, v in counts.items() if k not in MEASURED},
        "python": platform.python_version(),
        "versions": versions,
    }


def is_local(spec: str) -> bool:
    """A folder rather than a hub name: it exists, or looks like a path (a hub name is `org/name` or `name`).

    'gpt2' -> False, 'org/model' -> False, './models/base' -> True, 'data/own/base' -> True
    """
    return Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")) or spec.count("/") > 1


def covered_by_deps(path: str | Path, stage: str, dvc_file: Path = Path("dvc.yaml")) -> bool:
    """Whether a local file or folder lies under a dep of `stage` in dvc.yaml (the stage itself or its matrix's
    `do`), so that DVC reruns the stage when it changes. No dvc.yaml (a stage run by hand elsewhere): True.

    ('data/own/a.csv', 'ingest') -> True when dvc.yaml's ingest stage depends on data/own
    """
    if not dvc_file.exists():
        return True
    s = yaml.safe_load(dvc_file.read_text())["stages"][stage]
    deps = [Path(d).resolve() for d in s.get("do", s).get("deps", [])]
    target = Path(path).expanduser().resolve()
    return any(target == d or d in target.parents for d in deps)


def fail(message: str) -> typing.NoReturn:
    """Exit non-zero with one readable message (no traceback): for bad input the user must fix."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
