"""requirements.lock: every dependency pyproject.toml declares (dev, models and ray extras too) is pinned there at a
version its range allows, so `make` installs what the commit was tested with; torch is pinned by the Makefile
instead."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip requirements file."""
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", text, re.M)}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["models"], *extras["ray"]]]


def test_every_declared_dependency_is_locked_at_a_version_its_range_allows():
    locked = pins((ROOT / "requirements.lock").read_text())
    problems = []
    for req in declared():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        if name not in locked:
            problems.append(f"{req.name}: not in requirements.lock")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req.name}: locked {locked[name]}, pyproject.toml asks {req.specifier}")
    assert problems == [], "requirements.lock is stale; run `make lock`:\n" + "\n".join(problems)


def test_every_locked_package_has_a_hash_and_torch_is_the_makefiles():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 5)[-1])
    assert all("--hash=sha256:" in e for e in entries if "==" in e.split("\n")[0])
    assert "torch" not in pins(text)
    version = re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    torch = next(r for r in declared() if r.name == "torch")
    assert torch.specifier.contains(version)


def test_pins_reads_a_requirements_file():
    assert pins("a-b==1.0 \\\n    --hash=sha256:x\nC_d==2.3\n# e==9\n") == {"a-b": "1.0", "c-d": "2.3"}
