"""Safe by construction: nothing loads pickles or evaluates config, and no machine's paths leak into results.

The source check walks the syntax tree of every module the pipeline runs (stages/, flows/, scripts/, bench/,
metric_modules/), so a new `torch.load(path)` or `eval(...)` fails here with its file and line.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SOURCES = sorted(
    p for d in ("stages", "flows", "scripts", "metric_modules", "bench") for p in (ROOT / d).rglob("*.py")
)
PICKLERS = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each construct that could run code from a file or a config."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {n}") for n in names if n.split(".")[0] in PICKLERS]
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        if isinstance(f, ast.Name) and name in ("eval", "exec", "__import__"):
            found.append((node.lineno, f"{name}()"))
        weights_only = keyword(node, "weights_only")
        if (owner, name) == ("torch", "load") and not (isinstance(weights_only, ast.Constant) and weights_only.value):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
            found.append((node.lineno, f"yaml.{name} (use yaml.safe_load)"))
        allow = keyword(node, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append((node.lineno, "allow_pickle"))
    return found


def test_the_checker_finds_each_unsafe_construct():
    code = (
        "import pickle\nfrom joblib import load\nimport torch, yaml, numpy as np\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\ntorch.load('m.pt', weights_only=True)\n"
        "yaml.load(open('p.yaml'))\nyaml.safe_load(open('p.yaml'))\neval('1+1')\nnp.load('a.npy', allow_pickle=True)\n"
    )
    assert [line for line, _ in unsafe(ast.parse(code))] == [1, 2, 4, 5, 7, 9, 10]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_loading_or_eval_of_config(path):
    found = unsafe(ast.parse(path.read_text(), str(path)))
    assert not found, "; ".join(f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in found)


def test_results_name_no_path_of_the_machine_that_made_them(tiny_project):
    """dvc.lock, metrics, reports and every JSON beside the artifacts hold repo-relative paths only."""
    leaks = [str(tiny_project), str(Path.home()), str(ROOT), "/tmp/"]
    files = [tiny_project / "dvc.lock"]
    for folder in ("metrics", "reports", "data", "models"):
        files += [p for p in (tiny_project / folder).rglob("*") if p.suffix in (".json", ".jsonl", ".md", ".csv")]
    assert len(files) > 30  # the artifacts are there to be checked
    found = [(f, leak) for f in files for leak in leaks if leak in f.read_text(errors="replace")]
    assert not found, found


def test_services_listen_on_localhost_only():
    """Prefect's server binds 127.0.0.1 unless told otherwise, and nothing in the repo tells it otherwise."""
    from prefect.settings import get_current_settings

    assert get_current_settings().server.api.host == "127.0.0.1"
    texts = [ROOT / "README.md", ROOT / "prefect.yaml", ROOT / "Makefile", ROOT / ".ci" / "run", *SOURCES]
    offenders = [str(p.relative_to(ROOT)) for p in texts if "0.0.0.0" in p.read_text() or "--host ::" in p.read_text()]
    assert offenders == []
