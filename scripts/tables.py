"""Write the README's result tables from the committed metrics, so no number in them is typed by hand.

    python -m scripts.tables            # rewrite every generated block of README.md
    python -m scripts.tables --check    # exit 1 if a block differs from what the metrics give (tests run this)

A generated block sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; NAME picks the renderer below.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from stages.evaluate import with_ci as ci

README = Path("README.md")


def gap(c: dict) -> str:
    """A claim's gap with its interval; "-" where it was not measured."""
    return f"{c['gap']:+.1f} [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}]" if "gap" in c else "-"


def evaluate_table(m: dict) -> list[str]:
    """The pipeline's runs on the test set: accuracy and macro-F1 with their intervals, trainable parameters."""
    rows = ["| run | init | method | test accuracy [95% CI] | macro-F1 [95% CI] | trainable params |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in m["runs"].items():
        aug = " + back-translation" if r["augmented"] else ""
        rows.append(f"| {name} | {r['init']} | {r['method']}{aug} | {ci(r['accuracy'], r['accuracy_ci95'])} "
                    f"| {ci(r['macro_f1'], r['macro_f1_ci95'])} | {r['trainable_params']:,} "
                    f"({r['trainable_share']:.1%}) |")  # fmt: skip
    return rows + ["", f"{m['examples']} test verses from {m['clusters']} chapters; intervals: {m['interval']}."]


def claims_table(claims: list[dict], with_size: bool = False) -> list[str]:
    head = "| claim | " + ("labels per class | " if with_size else "") + "gap, points [95% CI] | verdict |"
    rows = [head, "|---|" + ("---|" if with_size else "") + "---|---|"]
    for c in claims:
        size = f"{c['size']} | " if with_size else ""
        why = f": {c['why']}" if "why" in c else ""
        rows.append(f"| {c['claim']} | {size}{gap(c)} | {c['verdict']}{why} |")
    return rows


def study_table(s: dict) -> list[str]:
    """Test accuracy by labeled-set size, mean over draws with its interval."""
    sizes = s["sizes"]
    rows = ["| run | " + " | ".join(f"{n} per class ({s['draws'][str(n)]} draws)" for n in sizes) + " |",
            "|---|" + "---|" * len(sizes)]  # fmt: skip
    for name, by_size in s["data_efficiency"].items():
        cells = [ci(c["accuracy"], c["accuracy_ci95"]) if (c := by_size.get(str(n))) else "-" for n in sizes]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


RENDERERS = {
    "evaluate": lambda: evaluate_table(load("metrics/evaluate.json")),
    "evaluate-claims": lambda: claims_table(load("metrics/evaluate.json")["claims"]),
    "study": lambda: study_table(load("metrics/study.json")),
    "study-claims": lambda: claims_table(load("metrics/study.json")["claims"], with_size=True),
}
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def render(text: str) -> str:
    """`text` with every generated block replaced by its renderer's lines."""

    def fill(m: re.Match) -> str:
        if m.group(2) not in RENDERERS:
            raise SystemExit(f"error: README.md: unknown table {m.group(2)!r}; known: {', '.join(RENDERERS)}")
        return m.group(1) + "\n".join(RENDERERS[m.group(2)]()) + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if README.md differs from the metrics")
    args = ap.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("error: README.md's tables differ from the committed metrics; run `python -m scripts.tables`",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(1)
        return
    README.write_text(new)


if __name__ == "__main__":
    main()
