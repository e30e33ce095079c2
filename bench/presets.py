"""bench.presets: what each preset's cleaning keeps of one-line texts and of chapters, and why it drops the rest.

    python -m bench.presets                      # writes reports/bench/presets.json (~15 min on one core)
    python -m bench.presets --short 300 --spanish 100 --chapters 30 --no-ablations --out /tmp/p.json  # a test's size

Three samples, built from the bundled Bibles (data/raw) with ingest's own chapter split (params.yaml ingest:), so
only training chapters are read and the run needs no earlier stage:

  short_text          distinct WEB verses, one document each: one-line texts, all English (keep them)
  short_text_spanish  distinct Spanish verses (sparv), one document each (drop them: not English)
  chapters            chapters (WEB and KJV), one verse a line, as `ingest` builds the bundled corpus

Each (sample, preset) goes through stages.clean.run with the preset's clean params (params.yaml's clean: laid over
params/presets/<preset>.yaml, as the stage resolves them; one task). Reported: documents in and kept, the kept
share, drops per reason, and what the gates will measure on the kept documents: characters, words and stopword
ratio per document (min, max; the share with no stopword) and the tokenize gate's block token drift (a BPE of
tokenize.vocab_size trained on the kept documents, packed as tokenize packs them).

`ablations`: short_text on its sample with one clean key at a time set to chapters' value, for every key where
the two differ: what each of short_text's choices keeps that chapters' value would drop.
"""

import argparse
import dataclasses
import json
import random
import tempfile
from pathlib import Path

import yaml

from bench import provenance
from stages.common import PARAMS_FILE, write_json

RAW = Path("data/raw")
REPORT = Path("reports/bench/presets.json")
PRESETS = ["chapters", "short_text", "web"]


def distinct_verses(rows: list[dict], split: dict, name: str, n: int, rng: random.Random) -> list[dict]:
    """n [{id, text}] of the training chapters' verses, each text once ('Yahweh spoke to Moses, saying,' recurs)."""
    verses = {}
    for r in rows:
        if split.get((r["book"], r["chapter"])) == "train":
            verses.setdefault(r["text"], f"{name}/{r['book']}.{r['chapter']}:{r['verse']}")
    return [{"id": ref, "text": text} for text, ref in rng.sample(sorted(verses.items()), n)]


def samples(raw: Path, n_short: int, n_spanish: int, n_chapters: int, seed: int) -> dict[str, list[dict]]:
    """{sample: [{id, text}]} of the training chapters: WEB verses, Spanish verses, chapters (WEB and KJV)."""
    from stages.ingest import IngestParams, build_corpus, read_raw, split_chapters
    from stages.presets import load_params

    p = load_params("ingest", IngestParams)
    web, kjv, sparv = (read_raw(raw / f"{t}.jsonl.gz") for t in ("web", "kjv", "sparv"))
    split = split_chapters([(r["book"], r["chapter"]) for r in web + kjv], p)
    rng = random.Random(seed)
    chapters = build_corpus({"web": web, "kjv": kjv}, split)
    picked = sorted(rng.sample(range(len(chapters)), n_chapters))  # corpus order, as clean meets them
    return {
        "short_text": distinct_verses(web, split, "web", n_short, rng),
        "short_text_spanish": distinct_verses(sparv, split, "sparv", n_spanish, rng),
        "chapters": [{"id": chapters[i]["id"], "text": chapters[i]["text"]} for i in picked],
    }


def preset_params(name: str, params_file: Path = PARAMS_FILE) -> dict:
    """params.yaml, its `preset` set to `name`, resolved: {clean: ..., gate: ...} as the stages would read them."""
    from stages.presets import resolve

    params = yaml.safe_load(params_file.read_text())
    return resolve({**params, "preset": name}, params_file)


def block_token_drift(texts: list[str], tokenize: dict) -> float:
    """|tokens in blocks / corpus tokens - 1| as the tokenize gate computes it, for these documents: a BPE trained
    on them, documents split and packed (an EOS after each, the last partial block of a split dropped) as tokenize
    does."""
    from stages.tokenize import pack, split_documents, train_tokenizer

    tok = train_tokenizer(texts, tokenize["vocab_size"], tokenize["min_frequency"], tokenize["special_tokens"])
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    block_tokens = 0
    for idx in split_documents(len(texts), tokenize["val_fraction"], tokenize["seed"]):
        block_tokens += sum(map(len, pack([ids[i] for i in idx], tokenize["block_size"], tok.eos_token_id)))
    corpus_tokens = sum(map(len, ids))
    return round(abs(block_tokens / corpus_tokens - 1), 4)


def kept_stats(texts: list[str], tokenize: dict) -> dict:
    """What the ingest, clean and tokenize gates measure on the kept documents."""
    from stages.suites import stopword_ratio

    chars, words = [len(t) for t in texts], [len(t.split()) for t in texts]
    ratios = [stopword_ratio(t) for t in texts]
    return {
        "chars": {"min": min(chars), "max": max(chars), "mean": round(sum(chars) / len(chars), 1)},
        "words": {"min": min(words), "max": max(words), "mean": round(sum(words) / len(words), 1)},
        "stopword_ratio": {"min": round(min(ratios), 4), "no_stopword_share": round(ratios.count(0) / len(ratios), 4)},
        "block_token_drift": block_token_drift(texts, tokenize),
    }


def clean_sample(docs: list[dict], clean: dict, tmp: Path) -> tuple[dict, list[str]]:
    """stages.clean.run on the documents with these clean params (one task): its metrics and the kept texts.

    When every document is dropped, run() stops before writing anything; the drops are then counted from a run of
    datatrove's pipelines alone, as run() counts them.
    """
    from collections import Counter

    from datasets import Dataset, load_from_disk

    from stages.clean import CleanParams, run, run_datatrove
    from stages.clean_steps import summarise_drops
    from stages.common import from_dict

    p = dataclasses.replace(from_dict(CleanParams, clean, "clean"), tasks=1, workers=1)
    Dataset.from_list(docs).save_to_disk(tmp / "in")
    try:
        metrics = run(p, tmp / "in", tmp / "out", tmp / "metrics.json")
    except SystemExit:  # nothing kept
        run_datatrove(p, tmp / "in", tmp / "work")
        drops = sum(summarise_drops(tmp / "work/dropped", 0)[0].values(), Counter())
        return {"documents_in": len(docs), "documents_out": 0, "drops": dict(drops), "seconds": None}, []
    return metrics, list(load_from_disk(str(tmp / "out/corpus"))["text"])


def differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings of the same keys.

    ({'x': {'y': 1, 'z': 2}}, {'x': {'y': 1, 'z': 3}}) -> ['x.z']
    """
    out = []
    for k in a:
        if isinstance(a[k], dict):
            out += differing_keys(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b[k]:
            out.append(f"{prefix}{k}")
    return out


def with_key(params: dict, key: str, value) -> dict:
    """A copy of params with the dotted key set: ({'a': {'b': 1}}, 'a.b', 2) -> {'a': {'b': 2}}."""
    head, _, rest = key.partition(".")
    return {**params, head: with_key(params[head], rest, value) if rest else value}


def value_at(params: dict, key: str):
    """The value at a dotted key: ({'a': {'b': 1}}, 'a.b') -> 1."""
    for k in key.split("."):
        params = params[k]
    return params


def summary(metrics: dict, kept: list[str], tokenize: dict | None) -> dict:
    """One (sample, params) row of the report; `kept` statistics only when tokenize params are given."""
    row = {
        "documents_in": metrics["documents_in"],
        "documents_kept": metrics["documents_out"],
        "kept_share": round(metrics["documents_out"] / metrics["documents_in"], 4),
        "drops": dict(sorted(metrics["drops"].items(), key=lambda kv: -kv[1])),
    }
    if tokenize is not None:
        row["kept"] = kept_stats(kept, tokenize) if kept else None
    return {**row, "seconds": metrics["seconds"]}


def ablations(docs: list[dict]) -> dict:
    """short_text on `docs` with each clean key where it differs from chapters set to chapters' value."""
    short, chapters = preset_params("short_text")["clean"], preset_params("chapters")["clean"]
    out = {}
    for key in differing_keys(short, chapters):
        if not value_at(short, key.split(".")[0] + ".enabled") and not key.endswith("enabled"):
            continue  # a threshold of a step short_text turns off changes nothing
        with tempfile.TemporaryDirectory() as tmp:
            metrics, kept = clean_sample(docs, with_key(short, key, value_at(chapters, key)), Path(tmp))
        out[key] = {
            "short_text": value_at(short, key),
            "chapters": value_at(chapters, key),
            **summary(metrics, kept, None),
        }
        print("ablation", key, out[key]["kept_share"], json.dumps(out[key]["drops"]))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", type=int, default=3000, help="one-line documents (distinct WEB verses)")
    ap.add_argument("--spanish", type=int, default=1000, help="one-line Spanish documents (distinct sparv verses)")
    ap.add_argument("--chapters", type=int, default=300, help="chapter documents")
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false", help="skip the ablations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    sets = samples(RAW, args.short, args.spanish, args.chapters, args.seed)
    tokenize = yaml.safe_load(PARAMS_FILE.read_text())["tokenize"]
    results = {}
    for sample, docs in sets.items():
        for name in args.presets:
            with tempfile.TemporaryDirectory() as tmp:
                metrics, kept = clean_sample(docs, preset_params(name)["clean"], Path(tmp))
            results.setdefault(sample, {})[name] = summary(metrics, kept, tokenize)
            print(sample, name, results[sample][name]["kept_share"], json.dumps(results[sample][name]["drops"]))
    report = {
        **provenance("bench.presets", argv),
        "samples": {k: len(v) for k, v in sets.items()},
        "seed": args.seed,
        "results": results,
        "ablations": ablations(sets["short_text"]) if args.ablations else None,
    }
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
