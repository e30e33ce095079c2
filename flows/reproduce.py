"""Rerun the pipeline at any git revision and check that it gives the metrics committed at that revision.

    python -m flows.reproduce HEAD~3                      # restore what the DVC cache has, recompute the rest, compare
    python -m flows.reproduce v1.0 --force                # recompute every stage, then compare
    python -m flows.reproduce 1a2b3c4 --tolerance 1e-4    # numbers may differ by this much (absolute or relative)

The revision is checked out in a temporary `git worktree` (the current checkout is not touched), whose DVC cache is
this repository's: `dvc checkout` restores every output the cache holds, then the `pipeline` flow (a subflow: one
task per stage) runs `dvc repro` there, so only stages whose outputs are missing or stale are recomputed, and
`--force` recomputes them all. The task log says which stages were reproduced and which were already up to date.

Then each metrics file declared in that revision's dvc.yaml is compared, key by key, with the file as committed at
that revision (`git show <rev>:<path>`). Measurements of one execution (`stages.common.MEASURED`: seconds,
throughput, memory) are skipped; numbers must agree within `--tolerance`, everything else exactly. Any difference
fails the flow run (and the command exits non-zero) with one line per key: file, key, committed and reproduced
value. A metrics file the revision did not commit is reported and skipped. The worktree is removed afterwards; what
the rerun computed stays in the shared DVC cache.
"""

import argparse
import contextlib
import json
import math
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import pipeline, run_dvc
from stages.common import MEASURED

MISSING = "<missing>"  # how an absent key or file shows in a mismatch


class MetricsMismatch(RuntimeError):
    """The reproduced metrics differ from the committed ones; the message lists every difference."""


@dataclass(frozen=True)
class Mismatch:
    path: str  # the metrics file, relative to the repo root
    key: str  # dotted: runs.full.accuracy
    committed: Any
    reproduced: Any

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: committed {self.committed!r}, reproduced {self.reproduced!r}"


def git(root: Path, *args: str) -> str:
    """Run git in `root`; return stdout (raises with git's stderr on failure)."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> dotted keys: {"runs": {"full": {"acc": 0.4}}, "n": [1, 2]} -> {"runs.full.acc": 0.4,
    "n.0": 1, "n.1": 2}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def parse_metrics(text: str, path: str) -> dict[str, Any]:
    """A metrics file's text (JSON, or YAML for .yaml/.yml), flattened."""
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    return flatten(data)


def is_measured(key: str) -> bool:
    """Whether a dotted key is a per-execution measurement, or inside one: `runs.full.train_seconds` and
    `translation_cache.pivot.hits` are, `runs.full.acc` not."""
    return any(part in MEASURED for part in key.split("."))


def same(committed: Any, reproduced: Any, tolerance: float) -> bool:
    """Equal, or for two numbers within `tolerance`, absolute or relative: 89.3 vs 89.3000004 -> True; True vs 1 ->
    False (a flag is not a number)."""
    if isinstance(committed, bool) or isinstance(reproduced, bool):
        return committed is reproduced
    if isinstance(committed, int | float) and isinstance(reproduced, int | float):
        return math.isclose(committed, reproduced, rel_tol=tolerance, abs_tol=tolerance)
    return committed == reproduced


def compare(path: str, committed: dict[str, Any], reproduced: dict[str, Any], tolerance: float) -> list[Mismatch]:
    """The keys of one metrics file whose values differ beyond `tolerance` (measurements skipped)."""
    keys = sorted(k for k in committed.keys() | reproduced.keys() if not is_measured(k))
    return [
        Mismatch(path, key, committed.get(key, MISSING), reproduced.get(key, MISSING))
        for key in keys
        if key not in committed or key not in reproduced or not same(committed[key], reproduced[key], tolerance)
    ]


def metrics_paths(root: Path) -> list[str]:
    """The metrics files `root`'s dvc.yaml declares, relative to `root`, posix."""
    with Repo(str(root)) as repo:
        return [Path(out.fs_path).relative_to(root).as_posix() for out in repo.index.metrics]


@contextlib.contextmanager
def revision_worktree(root: Path, sha: str) -> Iterator[Path]:
    """Check `sha` out in a temporary git worktree of `root`, sharing `root`'s DVC cache; remove it afterwards."""
    logger = get_run_logger()
    cache_dir = run_dvc(["cache", "dir"], root, logger)[-1].strip()
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        checkout = Path(tmp) / sha[:12]
        git(root, "worktree", "add", "--detach", str(checkout), sha)
        try:
            run_dvc(["cache", "dir", "--local", cache_dir], checkout, logger)  # .dvc/config.local of the worktree
            run_dvc(["checkout", "--allow-missing"], checkout, logger)  # what the cache has; the rest is recomputed
            yield checkout
        finally:
            git(root, "worktree", "remove", "--force", str(checkout))


@task(cache_policy=NO_CACHE)
def compare_metrics(checkout: Path, sha: str, tolerance: float) -> tuple[list[Mismatch], list[str], list[str]]:
    """Compare the reproduced metrics in `checkout` with those committed at `sha`.

    Returns (mismatches, files compared, files skipped because `sha` did not commit them).
    """
    mismatches, compared, skipped = [], [], []
    for path in metrics_paths(checkout):
        try:
            committed = parse_metrics(git(checkout, "show", f"{sha}:{path}"), path)
        except RuntimeError:
            skipped.append(path)
            continue
        file = checkout / path
        reproduced = parse_metrics(file.read_text(), path) if file.exists() else {}
        mismatches += compare(path, committed, reproduced, tolerance)
        compared.append(path)
    logger = get_run_logger()
    logger.info("compared %d metrics files; not committed at %s, skipped: %s", len(compared), sha[:12], skipped)
    for mismatch in mismatches:
        logger.error("%s", mismatch)
    return mismatches, compared, skipped


def version_drift(lock: str) -> list[str]:
    """Packages whose installed version differs from the one requirements.lock pins (or that are not installed):
    the revision's numbers were made with the pinned ones, so a difference may explain a mismatch."""
    import importlib.metadata as md
    import re

    drift = []
    for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", lock, re.M):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            drift.append(f"{name}: the commit pins {version}, installed {installed}")
    return drift


def locked_versions(root: Path, sha: str) -> str:
    """requirements.lock as committed at `sha` ("" where that commit has none)."""
    try:
        return git(root, "show", f"{sha}:requirements.lock")
    except RuntimeError:
        return ""


def report(
    sha: str, stages: dict[str, str], mismatches: list[Mismatch], compared: list[str], skipped: list[str],
    drift: list[str] = (),
) -> str:  # fmt: skip
    """The run's markdown summary (published as the `reproduction` artifact)."""
    verdict = "reproduced: metrics match" if not mismatches else f"NOT reproduced: {len(mismatches)} metric(s) differ"
    lines = [f"# {sha[:12]}: {verdict}", "", "| stage | verdict |", "|---|---|"]
    lines += [f"| {stage} | {outcome} |" for stage, outcome in stages.items()]
    lines += ["", f"Metrics files compared: {', '.join(compared) or 'none'}"]
    if skipped:
        lines += [f"Not committed at {sha[:12]}, skipped: {', '.join(skipped)}"]
    if mismatches:
        lines += ["", "| file | key | committed | reproduced |", "|---|---|---|---|"]
        lines += [f"| {m.path} | {m.key} | {m.committed!r} | {m.reproduced!r} |" for m in mismatches]
    if drift:
        lines += ["", f"Installed versions that differ from the commit's requirements.lock ({len(drift)}):", ""]
        lines += [f"- {d}" for d in drift]
    return "\n".join(lines) + "\n"


@flow(name="reproduce")
def reproduce(rev: str, root: Path | None = None, tolerance: float = 1e-6, force: bool = False) -> dict[str, Any]:
    """Rerun `root`'s pipeline at git revision `rev` in a temporary worktree; fail unless its metrics match.

    Returns {"rev": the commit, "stages": stage -> verdict, "compared": metrics files compared}.
    """
    root = (root or Path.cwd()).resolve()
    sha = git(root, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    logger = get_run_logger()
    logger.info("reproducing %s (%s)", rev, sha)
    if drift := version_drift(locked_versions(root, sha)):
        logger.warning("installed versions differ from %s's requirements.lock (%d): %s; `make setup` at that commit "
                       "installs its own", sha[:12], len(drift), "; ".join(drift[:10]))  # fmt: skip
    with revision_worktree(root, sha) as checkout:
        stages = pipeline(root=checkout, force=force)
        mismatches, compared, skipped = compare_metrics(checkout, sha, tolerance)
    create_markdown_artifact(report(sha, stages, mismatches, compared, skipped, drift), key="reproduction")
    if mismatches:
        lines = "\n".join(str(m) for m in mismatches)
        raise MetricsMismatch(f"{rev} ({sha[:12]}) did not reproduce, tolerance {tolerance:g}:\n{lines}")
    return {"rev": sha, "stages": stages, "compared": compared}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="a git revision: a commit, tag or branch")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the DVC repository (default: cwd)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="for numbers, absolute or relative")
    parser.add_argument("--force", action="store_true", help="recompute every stage, even those the cache has")
    args = parser.parse_args(argv)
    state = reproduce(args.rev, root=args.root, tolerance=args.tolerance, force=args.force, return_state=True)
    if not state.is_completed():
        raise SystemExit(state.message)


if __name__ == "__main__":
    main()
