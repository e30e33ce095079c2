"""bench.clean_quality: does the clean stage drop what it should and keep what it should, on labeled real text?

    python -m bench.clean_quality                            # 375 documents; writes reports/bench/clean_quality.json
    python -m bench.clean_quality --scale 0.1 --out /tmp/q.json  # 10% of each category (a test's size)

The labeled set is built from the bundled verse files (data/raw/{web,kjv,sparv}.jsonl.gz) with a fixed seed, one
category per kind of document the stage meets in a web-scale corpus:

  clean           keep  English chapters, WEB and KJV of the same chapters (two translations: not duplicates)
  markup          keep  other chapters with markup leftovers (<note>, <w>, <p>, &amp;): kept, and repaired
  pii             keep  other chapters with an email and a public IP inserted: kept, and masked
  exact_duplicate drop  a clean chapter again, with only whitespace changed (extra spaces, blank lines)
  near_duplicate  drop  a clean chapter again with small edits (~1% of words replaced, one verse removed)
  non_english     drop  Spanish chapters (sparv)
  repeated_lines  drop  pages of a few verses repeated over and over
  boilerplate     drop  navigation, cookie and subscription pages (short lines, policy text)

The clean chapters come first, so dedup keeps them and drops their copies. The set goes through stages.clean.run
with params.yaml's `clean:` (every dropped document written out, for the reasons). Per category: documents,
dropped, the drop reasons; `recall` (share dropped) for drop categories, `kept_share` (the precision target: a
clean chapter dropped is a false drop) for keep categories; overall precision/recall of "drop". Targets: recall
>= 0.95 on exact and near duplicates and non-English, kept_share >= 0.95 on clean chapters.
"""

import argparse
import dataclasses
import json
import random
import tempfile
from collections import Counter
from pathlib import Path

from bench import provenance
from stages.common import write_json
from stages.presets import load_params

RAW = Path("data/raw")
REPORT = Path("reports/bench/clean_quality.json")
SIZES = {"clean": 160, "markup": 25, "pii": 20, "exact_duplicate": 40, "near_duplicate": 40, "non_english": 40,
         "repeated_lines": 25, "boilerplate": 25}  # fmt: skip
EXPECTED = {"clean": "keep", "markup": "keep", "pii": "keep"}  # every other category: drop
TARGETS = {"exact_duplicate": 0.95, "near_duplicate": 0.95, "non_english": 0.95, "clean": 0.95}
BOILERPLATE = [
    "Home", "About us", "Contact", "Blog", "Shop", "Log in", "Sign up", "Search", "Menu", "Cart (0)",
    "We use cookies to improve your experience on our website.", "Accept all cookies", "Privacy policy",
    "Terms of use", "Subscribe to our newsletter", "Share on Facebook", "Tweet", "Copyright 2024. All rights.",
    "Please enable JavaScript to view the comments.", "Related posts", "Read more", "Next page", "Previous page",
]  # fmt: skip


def chapters(path: Path) -> dict[tuple[str, int], str]:
    """{(book, chapter): verses joined by newlines}, as stages.ingest builds a corpus document."""
    from stages.ingest import read_raw

    out: dict[tuple[str, int], list[str]] = {}
    for r in read_raw(path):
        out.setdefault((r["book"], r["chapter"]), []).append(r["text"])
    return {k: "\n".join(v) for k, v in out.items()}


def near_copy(text: str, rng: random.Random) -> str:
    """~1% of the words replaced by another word of the text, one verse (line) removed when there are 4 or more."""
    lines = text.split("\n")
    if len(lines) >= 4:
        del lines[rng.randrange(len(lines))]
    words = "\n".join(lines).split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = rng.choice(words)
    return " ".join(words)


def with_markup(text: str, rng: random.Random) -> str:
    """Leftovers of an HTML/USFM export: 'a b' -> '<p>a <w lemma="x">b</w> <note>..</note></p>'."""
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        i = rng.randrange(len(words))
        words[i] = f'<w lemma="strong:{rng.randrange(9999)}">{words[i]}</w>'
        if rng.random() < 0.3:
            words.append("<note>cross reference</note>")
        lines.append("<p>" + " ".join(words).replace(" and ", " &amp; ", 1) + "</p>")
    return "\n".join(lines)


def labeled_set(raw: Path, scale: float, seed: int) -> list[dict]:
    """[{id, text, category}] with the clean chapters first; sizes are SIZES * scale (at least 2 each)."""
    rng = random.Random(seed)
    n = {k: max(2, round(v * scale)) for k, v in SIZES.items()}
    web, kjv, sparv = (chapters(raw / f"{t}.jsonl.gz") for t in ("web", "kjv", "sparv"))
    keys = sorted(web.keys() & kjv.keys())
    rng.shuffle(keys)
    clean_keys, rest = keys[: n["clean"] // 2], keys[n["clean"] // 2 :]
    clean = [(f"{t}/{b}.{c}", src[(b, c)]) for b, c in clean_keys for t, src in (("web", web), ("kjv", kjv))]
    docs = [{"id": i, "text": t, "category": "clean"} for i, t in clean]

    def add(category, items):
        docs.extend({"id": f"{category}/{i}", "text": t, "category": category} for i, t in items)

    add("markup", [(f"web/{b}.{c}", with_markup(web[(b, c)], rng)) for b, c in rest[: n["markup"]]])
    rest = rest[n["markup"] :]
    add("pii", [(f"kjv/{b}.{c}", kjv[(b, c)] + f"\nWrite to pastor{rng.randrange(999)}@gmail.com or visit "
                 f"{rng.randrange(11, 200)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}.")
                for b, c in rest[: n["pii"]]])  # fmt: skip
    spaced = [(i, t.replace(" ", "  ", 3).replace("\n", " \n\n")) for i, t in rng.sample(clean, n["exact_duplicate"])]
    add("exact_duplicate", spaced)
    add("near_duplicate", [(i, near_copy(t, rng)) for i, t in rng.sample(clean, n["near_duplicate"])])
    add("non_english", [(f"sparv/{b}.{c}", sparv[(b, c)]) for b, c in rng.sample(sorted(sparv), n["non_english"])])
    pages = []
    for i in range(n["repeated_lines"]):
        verses = rng.choice(list(web.values())).split("\n")[: rng.randint(1, 3)]
        pages.append((str(i), "\n".join(verses * rng.randint(8, 20))))
    add("repeated_lines", pages)
    add(
        "boilerplate",
        [(str(i), "\n".join(rng.sample(BOILERPLATE, rng.randint(8, 16)))) for i in range(n["boilerplate"])],
    )
    return docs


def score(docs: list[dict], kept: dict[str, str], reasons: dict[str, str]) -> dict:
    """Per category and overall: documents, dropped, reasons, recall or kept_share (see the module docstring)."""
    cats = {}
    for cat in SIZES:
        rows = [d for d in docs if d["category"] == cat]
        dropped = [d for d in rows if d["id"] not in kept]
        c = {"documents": len(rows), "expected": EXPECTED.get(cat, "drop"), "dropped": len(dropped),
             "reasons": dict(Counter(reasons.get(d["id"], "?") for d in dropped).most_common())}  # fmt: skip
        if c["expected"] == "drop":
            c["recall"] = round(len(dropped) / len(rows), 4)
            c["missed"] = [d["id"] for d in rows if d["id"] in kept][:10]
        else:
            c["kept_share"] = round(1 - len(dropped) / len(rows), 4)
            c["wrongly_dropped"] = [d["id"] for d in dropped][:10]
        if cat == "markup":
            c["repaired_share"] = round(sum("<" not in kept.get(d["id"], "<") for d in rows) / len(rows), 4)
        if cat == "pii":
            c["masked_share"] = round(sum("@gmail" not in kept.get(d["id"], "@gmail") for d in rows) / len(rows), 4)
        cats[cat] = c
    true_drops = sum(c["dropped"] for c in cats.values() if c["expected"] == "drop")
    all_drops = sum(c["dropped"] for c in cats.values())
    should = sum(c["documents"] for c in cats.values() if c["expected"] == "drop")
    return {"categories": cats, "drop_precision": round(true_drops / max(1, all_drops), 4),
            "drop_recall": round(true_drops / should, 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    from datasets import Dataset, load_from_disk

    from stages.clean import CleanParams, run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size of each category, times SIZES")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    p = dataclasses.replace(load_params("clean", CleanParams), sample_per_reason=10**9)  # every drop written
    docs = labeled_set(RAW, args.scale, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        Dataset.from_list([{"id": d["id"], "text": d["text"]} for d in docs]).save_to_disk(f"{tmp}/in")
        metrics = run(p, Path(tmp, "in"), Path(tmp, "out"), Path(tmp, "metrics.json"))
        kept = dict(zip(*[load_from_disk(f"{tmp}/out/corpus")[k] for k in ("id", "text")], strict=True))
        dropped = [json.loads(line) for line in Path(tmp, "out/dropped.jsonl").read_text().splitlines()]
    report = {
        **provenance("bench.clean_quality", argv),
        "documents": len(docs),
        "seed": args.seed,
        "scale": args.scale,
        **score(docs, kept, {d["id"]: f"{d['step']}/{d['reason']}" for d in dropped}),
        "targets": {k: {"min": v, "metric": "kept_share" if k in EXPECTED else "recall"} for k, v in TARGETS.items()},
        "seconds": metrics["seconds"],
    }
    cats = report["categories"]
    report["meets_targets"] = all(cats[k][t["metric"]] >= t["min"] for k, t in report["targets"].items())
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
