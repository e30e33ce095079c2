"""Setup: make sure Apertium and the four pivot pairs are installed, installing them where apt-get may be used.

    python3 -m scripts.apertium            # needed only when params.yaml's augment.translators is apertium
    python3 -m scripts.apertium --always   # needed whatever params.yaml says (the tests use Apertium)

`make setup` runs it first (so `make pipeline` and `make test` stop before any work), with the system python3 and
the standard library only. When a mode is missing and this runs as root with apt-get (CI on a clean Debian machine),
it runs `apt-get update` and installs the packages (stages.apertium.PACKAGES); otherwise it exits 1 with the one
command to run and the params fallback, the message the augment stage gives.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from stages import apertium


def translators(params: Path) -> str:
    """augment.translators as written in params.yaml (read without PyYAML, which setup may not have yet):
    "apertium", "pipeline", or "" for a mapping of checkpoints."""
    section = re.search(r"^augment:\n((?:[ #].*\n|\n)*)", params.read_text() + "\n", re.M)
    found = re.search(r"^  translators:[ \t]*([^\s#]*)", section.group(1) if section else "", re.M)
    return found.group(1) if found else "apertium"  # the params dataclass's default


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--always", action="store_true", help="needed whatever params.yaml says")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    if not args.always and translators(args.params) != "apertium":
        print(f"apertium: not needed ({args.params}: augment.translators is not apertium)")
        return 0
    pivots = list(apertium.PIVOTS)
    if apertium.missing(pivots) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"apertium: installing {' '.join(apertium.PACKAGES)}", flush=True)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *apertium.PACKAGES], env=env,
                       check=False)  # fmt: skip
    if why := apertium.missing(pivots):
        print(f"error: {why}", file=sys.stderr)
        return 1
    versions = apertium.versions(pivots)
    print("apertium: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
