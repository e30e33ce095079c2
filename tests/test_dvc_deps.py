"""dvc.yaml: every stage lists, in its deps, each project module its command imports, directly or through other
project modules (lazy imports inside functions count), so DVC never calls a stage up to date after its code changed."""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DVC_FILES = ["dvc.yaml", "study/dvc.yaml"]


def module_file(name: str) -> Path | None:
    """stages.clean -> stages/clean.py (or a package's __init__.py) under the repo; None outside it."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[str]:
    """Every module name an `import` or `from ... import` in the file may load, relative imports resolved."""
    package = path.parent.relative_to(ROOT).parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def closure(module: str) -> set[Path]:
    """The project files a module runs: itself and every project module it imports, transitively."""
    seen, todo = set(), [module_file(module)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in imported(path):
            parts = name.split(".")
            todo += [module_file(".".join(parts[: i + 1])) for i in range(len(parts))]
    return seen


def stages(dvc_file: str):
    """(stage name, its commands, its deps as paths) of a dvc.yaml, foreach stages by their `do` template."""
    spec = yaml.safe_load((ROOT / dvc_file).read_text())
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        wdir = (ROOT / dvc_file).parent / stage.get("wdir", ".")
        cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]
        deps = [(wdir / (d if isinstance(d, str) else next(iter(d)))).resolve() for d in body.get("deps", [])]
        yield name, cmds, deps


def gaps(dvc_file: str) -> list[str]:
    out = []
    for name, cmds, deps in stages(dvc_file):
        for cmd in cmds:
            for module in re.findall(r"python3?\s+-m\s+([\w.]+)", cmd):
                for path in sorted(closure(module)):
                    if path.name == "__init__.py":
                        continue  # package markers: environment defaults, nothing an output depends on
                    if not any(path == d or d in path.parents for d in deps):
                        out.append(f"{dvc_file}: {name} runs {path.relative_to(ROOT)}")
    return out


@pytest.mark.parametrize("dvc_file", DVC_FILES)
def test_every_stage_declares_the_project_code_it_runs(dvc_file):
    assert gaps(dvc_file) == []


def test_the_closure_follows_lazy_and_transitive_imports(tmp_path):
    found = {p.relative_to(ROOT).as_posix() for p in closure("stages.evaluate")}
    assert {"stages/evaluate.py", "specialist/scoring.py", "specialist/claims.py", "stages/common.py"} <= found
    assert "stages/baseline.py" in found  # imported inside predict_baseline()
