"""Benchmarks of the pipeline's stages, run as modules (`python -m bench.<stage>`); results in reports/bench/."""

import shlex
import sys
from datetime import UTC, datetime


def provenance(module: str, argv: list[str] | None) -> dict:
    """A report's "command" (the line that reproduces it; argv None: this process's) and "date" keys."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["python", "-m", module, *args]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
