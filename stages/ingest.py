"""ingest: raw verse-aligned Bibles -> pre-training corpus, fine-tuning task, parallel corpus.

Reads  data/raw/{web,kjv,sparv}.jsonl.gz (rows: book, chapter, verse, text)
Writes data/1_ingest/corpus    Dataset: English chapters as documents (id, book, chapter, translation, text)
       data/1_ingest/task      DatasetDict: verse -> genre of its book; splits train, validation, test, and
                               pool (every labeled verse of the training chapters, from which train is drawn)
       data/1_ingest/parallel  DatasetDict train/validation: English <-> Spanish verse pairs
       data/1_ingest/splits.json  chapter -> split, the single record of the split
       metrics/ingest.json

    python -m stages.ingest

The split is by chapter, per genre, from `ingest.seed`: a validation or test chapter appears in no corpus
document, no parallel pair and no training example, in any translation.

Own data (`ingest.source: own`, docs/own-data.md): the corpus, task and parallel corpus come from the sources of
`ingest.corpus`, `ingest.task` and `ingest.parallel` (stages/sources.py reads them) into the same three artifacts,
so every later stage runs unchanged. Rows keep the bundled keys: book is the source ('corpus', 'task', 'validation',
'test', 'parallel'), chapter the row's position in it, verse 1. The task is split per class from the seed unless
validation/test are given; corpus documents and parallel pairs that are a held-out task text are dropped (counted).
The corpus streams (Dataset.from_generator), so it may be larger than memory; the task and pairs are read whole.
Without a parallel corpus the parallel splits are empty and translate and augment say they skipped.
"""

import dataclasses
import gzip
import json
import random
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from stages.common import atomic_dir, covered_by_deps, fail, load_params, meta, write_json
from stages.sources import Source, describe, label_names, read_labeled, split_rows
from stages.sources import rows as source_rows

RAW = Path("data/raw")
OUT = Path("data/1_ingest")
METRICS = Path("metrics/ingest.json")

# Book (OSIS id) -> genre. Fixed and documented here: the labels of the fine-tuning task. Daniel goes with
# Revelation as apocalyptic (its second half is the Old Testament's apocalypse); Acts is New Testament history;
# Lamentations stays with the prophets (it follows Jeremiah).
GENRES = {
    "law": "Gen Exod Lev Num Deut",
    "history": "Josh Judg Ruth 1Sam 2Sam 1Kgs 2Kgs 1Chr 2Chr Ezra Neh Esth Acts",
    "wisdom": "Job Ps Prov Eccl Song",
    "prophets": "Isa Jer Lam Ezek Hos Joel Amos Obad Jonah Mic Nah Hab Zeph Hag Zech Mal",
    "gospels": "Matt Mark Luke John",
    "letters": "Rom 1Cor 2Cor Gal Eph Phil Col 1Thess 2Thess 1Tim 2Tim Titus Phlm Heb Jas 1Pet 2Pet 1John 2John "
    "3John Jude",
    "apocalyptic": "Dan Rev",
}
LABELS = list(GENRES)
BOOK_GENRE = {book: genre for genre, books in GENRES.items() for book in books.split()}


@dataclass(frozen=True)
class IngestParams:
    seed: int
    val_fraction: float  # share of each genre's chapters held out for validation
    test_fraction: float  # ... and for test
    train_per_class: int  # labeled training verses per genre: few on purpose
    eval_per_class: int  # verses per genre in validation (balanced; fewer if a genre has fewer)
    corpus_translations: list[str]  # English translations whose chapters form the pre-training corpus
    task_translation: str  # translation of the task's verses
    parallel_source: str  # parallel corpus: source (English) ...
    parallel_target: str  # ... and target (Spanish) translation
    parallel_val_chapters: int  # training chapters (own data: pairs) kept out of the parallel train split
    test_per_class: int | None = None  # verses per genre in test; None = every verse of the test chapters
    source: str = "bundled"  # bundled: the Bibles of data/raw (the keys above); own: corpus, task, parallel below
    corpus: Source | None = None  # own: the pre-training corpus (text_column)
    task: Source | None = None  # own: the labeled set (text_column, label_column, labels, validation, test)
    parallel: Source | None = None  # own: English (text_column) <-> other language (target_column); null = none

    def validate(self):
        if self.source not in ("bundled", "own"):
            yield f"source: expected bundled or own, got {self.source!r}"
        if self.source == "own" and (self.corpus is None or self.task is None):
            yield "corpus/task: ingest.source own needs both a corpus and a task source"
        for key in ("corpus", "parallel"):
            s = getattr(self, key)
            if s is not None and (s.labels is not None or s.validation is not None or s.test is not None):
                yield f"{key}: labels, validation and test belong to ingest.task"
        default = Source()
        for name in ("validation", "test"):
            given = getattr(self.task, name, None)
            columns = ("text_column", "label_column", "target_column", "labels", "validation", "test")
            if given is not None and any(getattr(given, c) != getattr(default, c) for c in columns):
                yield f"task.{name}: takes the task's columns and labels; give only files or hf/config/split, format"
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            yield "val_fraction/test_fraction: each in (0, 1) and summing below 1"
        if self.train_per_class < 1 or self.eval_per_class < 1 or (self.test_per_class or 1) < 1:
            yield "train_per_class/eval_per_class/test_per_class: must be >= 1 (test_per_class null: every one)"


def read_raw(path: Path) -> list[dict]:
    """Rows of one raw translation file; a corrupt or malformed file fails naming the file and line."""
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    rows.append({k: row[k] for k in ("book", "chapter", "verse", "text")})
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    fail(f"{path}:{n}: expected a JSON object with book, chapter, verse, text ({e})")
    except (OSError, EOFError) as e:
        fail(f"{path}: cannot read ({e}); rebuild it with `python -m scripts.build_raw`")
    if not rows:
        fail(f"{path}: no verses")
    return rows


def split_chapters(chapters: list[tuple[str, int]], p: IngestParams) -> dict[tuple[str, int], str]:
    """Chapter -> 'train' | 'validation' | 'test', per genre, deterministic from p.seed.

    Every genre gets at least one validation and one test chapter.
    """
    by_genre = defaultdict(list)
    for ch in sorted(set(chapters)):
        by_genre[BOOK_GENRE[ch[0]]].append(ch)
    rng = random.Random(p.seed)
    split = {}
    for genre in LABELS:
        chs = by_genre[genre]
        rng.shuffle(chs)
        n_test = max(1, round(p.test_fraction * len(chs)))
        n_val = max(1, round(p.val_fraction * len(chs)))
        for i, ch in enumerate(chs):
            split[ch] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return split


def build_corpus(translations: dict[str, list[dict]], split: dict) -> list[dict]:
    """English training chapters as documents, one verse a line."""
    docs = []
    for name, rows in translations.items():
        chapters = defaultdict(list)
        for r in rows:
            if split[(r["book"], r["chapter"])] == "train":
                chapters[(r["book"], r["chapter"])].append(r["text"])
        for (book, chapter), verses in chapters.items():
            docs.append(
                {"id": f"{name}/{book}.{chapter}", "book": book, "chapter": chapter, "translation": name,
                 "text": "\n".join(verses)}
            )  # fmt: skip
    return docs


def sample_per_class(rows: list[dict], n: int | None, rng: random.Random) -> list[dict]:
    """Up to n rows per label, in a seeded random order, sorted back into canonical order; n None: every row."""
    if n is None:
        return sorted(rows, key=lambda r: r["order"])
    by_label = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    picked = []
    for label in sorted(by_label):
        group = by_label[label]
        picked += rng.sample(group, min(n, len(group)))
    return sorted(picked, key=lambda r: r["order"])


def build_task(rows: list[dict], split: dict, p: IngestParams) -> dict[str, list[dict]]:
    """Verse -> genre examples: a small balanced train set, a balanced validation set, the test set (every verse of
    the test chapters by default: intervals need all of them), and the pool."""
    by_split = defaultdict(list)
    for i, r in enumerate(rows):
        s = split[(r["book"], r["chapter"])]
        by_split[s].append({**r, "label": LABELS.index(BOOK_GENRE[r["book"]]), "order": i})
    # Some verses recur word for word in other chapters (Exodus 26 and 36, Kings and Chronicles): a held-out
    # verse whose text a training chapter also holds would be a leak, so it is not used for evaluation.
    train_texts = {r["text"] for r in by_split["train"]}
    rng = random.Random(p.seed + 1)
    task = {
        "train": sample_per_class(by_split["train"], p.train_per_class, rng),
        "validation": sample_per_class(
            [r for r in by_split["validation"] if r["text"] not in train_texts], p.eval_per_class, rng
        ),
        "test": sample_per_class([r for r in by_split["test"] if r["text"] not in train_texts], p.test_per_class, rng),
        "pool": by_split["train"],
    }
    return {
        name: [{k: r[k] for k in ("text", "label", "book", "chapter", "verse")} for r in rs]
        for name, rs in task.items()
    }


def build_parallel(source: list[dict], target: list[dict], split: dict, p: IngestParams) -> dict[str, list[dict]]:
    """Verse pairs of the training chapters; `parallel_val_chapters` of them held out as validation."""
    tgt = {(r["book"], r["chapter"], r["verse"]): r["text"] for r in target}
    train_chapters = sorted(ch for ch, s in split.items() if s == "train")
    held = set(random.Random(p.seed + 2).sample(train_chapters, p.parallel_val_chapters))
    out = {"train": [], "validation": []}
    for r in source:
        key = (r["book"], r["chapter"], r["verse"])
        if split[key[:2]] != "train" or key not in tgt:
            continue
        pair = {
            "source": r["text"],
            "target": tgt[key],
            "book": r["book"],
            "chapter": r["chapter"],
            "verse": r["verse"],
        }
        out["validation" if key[:2] in held else "train"].append(pair)
    return out


OWN_KEYS = ("source", "corpus", "task", "parallel")
TASK_ORDER = ("train", "validation", "test", "pool")  # the task's splits, in the order they are saved


def recorded_params(p: IngestParams) -> dict:
    """p as meta.json records it. The bundled data's record leaves out the own-data keys: its artifact stays
    byte-identical to the one written before they existed (same dvc.lock hash, nothing downstream reruns)."""
    params = dataclasses.asdict(p)
    if p.source == "bundled":
        params = {k: v for k, v in params.items() if k not in OWN_KEYS}
    return params


def run(p: IngestParams, raw: Path = RAW, out: Path = OUT, metrics_path: Path = METRICS) -> dict:
    if p.source == "own":
        return run_own(p, out, metrics_path)
    return run_bundled(p, raw, out, metrics_path)


def run_bundled(p: IngestParams, raw: Path, out: Path, metrics_path: Path) -> dict:
    """The bundled Bibles -> corpus, task, parallel (ingest.source: bundled)."""
    from datasets import ClassLabel, Dataset, DatasetDict

    names = sorted({*p.corpus_translations, p.task_translation, p.parallel_source, p.parallel_target})
    translations = {name: read_raw(raw / f"{name}.jsonl.gz") for name in names}
    unknown = sorted({r["book"] for rows in translations.values() for r in rows} - set(BOOK_GENRE))
    if unknown:
        fail(f"{raw}: books with no genre in stages/ingest.py GENRES: {', '.join(unknown)}")
    split = split_chapters([(r["book"], r["chapter"]) for rows in translations.values() for r in rows], p)

    corpus = build_corpus({n: translations[n] for n in p.corpus_translations}, split)
    task = build_task(translations[p.task_translation], split, p)
    parallel = build_parallel(translations[p.parallel_source], translations[p.parallel_target], split, p)

    label = ClassLabel(names=LABELS)
    task_ds = DatasetDict({k: Dataset.from_list(v).cast_column("label", label) for k, v in task.items()})
    with atomic_dir(out) as tmp:
        Dataset.from_list(corpus).save_to_disk(tmp / "corpus")
        task_ds.save_to_disk(tmp / "task")
        DatasetDict({k: Dataset.from_list(v) for k, v in parallel.items()}).save_to_disk(tmp / "parallel")
        write_json({f"{b}.{c}": s for (b, c), s in sorted(split.items())}, tmp / "splits.json")
        counts = {
            "chapters": dict(sorted(Counter(split.values()).items())),
            "corpus_documents": len(corpus),
            "corpus_chars": sum(len(d["text"]) for d in corpus),
            "task": {k: len(v) for k, v in task.items()},
            "task_train_per_class": dict(sorted(Counter(LABELS[r["label"]] for r in task["train"]).items())),
            "parallel": {k: len(v) for k, v in parallel.items()},
        }
        write_json({**meta(recorded_params(p), **counts), "labels": LABELS, "genres": GENRES}, tmp / "meta.json")
    write_json(counts, metrics_path)
    return counts


# --- own data (ingest.source: own): the same artifacts from a user's sources (stages/sources.py reads them) -------


def own_task(p: IngestParams) -> tuple[dict[str, list[dict]], list[str], dict]:
    """A user's labeled set -> the task's splits (as build_task's), the label names, and counts.

    Rows get the bundled data's keys: book is where a row came from ('task', or 'validation'/'test' for a given
    split), chapter its 1-based position there, verse 1; splits.json records the split of each ('task.7': 'test').
    Validation and test not given are split per class from the seed; held-out rows whose text also stands in the
    training rows are dropped (a leak), and train, validation and test are sampled per class as the bundled ones.
    """
    t = p.task
    read = {"task": read_labeled(t, "task", t)}
    for name in ("validation", "test"):
        if getattr(t, name) is not None:
            read[name] = read_labeled(getattr(t, name), f"task.{name}", t)
    labeled = {name: rs for name, (rs, _) in read.items()}
    names = label_names([r for rs in labeled.values() for r in rs], t.labels)
    fractions = {n: f for n, f in (("test", p.test_fraction), ("validation", p.val_fraction)) if n not in labeled}
    by_split = {name: [] for name in ("train", "validation", "test")}
    for name, idx in split_rows([r["label"] for r in labeled["task"]], fractions, p.seed).items():
        by_split[name] += [("task", i) for i in idx]
    for name in ("validation", "test"):
        by_split[name] += [(name, i) for i in range(len(labeled.get(name, [])))]  # a given split, whole
    examples = {}
    for split, keys in by_split.items():
        examples[split] = [{"text": labeled[book][i]["text"], "label": names.index(labeled[book][i]["label"]),
                            "book": book, "chapter": i + 1, "verse": 1, "order": n}
                           for n, (book, i) in enumerate(keys)]  # fmt: skip
    train_texts = {r["text"] for r in examples["train"]}
    rng = random.Random(p.seed + 1)
    task, leaks = {"pool": examples["train"]}, {}
    task["train"] = sample_per_class(examples["train"], p.train_per_class, rng)
    for split in ("validation", "test"):
        kept = [r for r in examples[split] if r["text"] not in train_texts]
        leaks[split] = len(examples[split]) - len(kept)
        if not kept:
            fail(f"ingest.task: the {split} split is empty ({leaks[split]} rows, each also a training text)")
        task[split] = sample_per_class(kept, p.eval_per_class if split == "validation" else p.test_per_class, rng)
    task = {k: [{c: r[c] for c in ("text", "label", "book", "chapter", "verse")} for r in task[k]] for k in TASK_ORDER}
    counts = {
        "task_dropped": {name: dict(sorted(d.items())) for name, (_, d) in read.items() if d},
        "task_held_out_in_train": leaks,  # validation/test rows dropped: their text is a training row's too
        "task_splits_given": [n for n in ("validation", "test") if n in labeled],  # the rest: split from the seed
    }
    return task, names, counts


def own_splits(task: dict[str, list[dict]], p: IngestParams) -> dict[str, str]:
    """splits.json for a user's data: each task row's split, and whole sources by name ('corpus': 'train')."""
    split = {"corpus": "train", "parallel": "train"}
    split |= {name: name for name in ("validation", "test") if getattr(p.task, name) is not None}
    for name in ("pool", "validation", "test"):
        for r in task[name]:
            if r["book"] == "task":
                split[f"task.{r['chapter']}"] = "train" if name == "pool" else name
    return split


def own_corpus(s: Source, held_out: set[str], tally: Counter):
    """Corpus documents of a user's source, streamed; a document that is a held-out task text is dropped.

    `tally` counts the drops per reason and the characters kept ('chars'), as the rows go by."""
    for n, (where, row) in enumerate(source_rows(s, "corpus", {"text_column": s.text_column}, tally), 1):
        text = row[s.text_column]
        if not isinstance(text, str) or not text.strip():
            tally["empty_text"] += 1
        elif text.strip() in held_out:
            tally["held_out_text"] += 1
        else:
            tally["chars"] += len(text.strip())
            yield {"id": where, "book": "corpus", "chapter": n, "translation": "own", "text": text.strip()}


def own_parallel(s: Source | None, held_out: set[str], p: IngestParams) -> tuple[dict[str, list[dict]], Counter]:
    """Pairs of a user's parallel corpus, `parallel_val_pairs` of them held out as validation; none when null."""
    out, drops = {"train": [], "validation": []}, Counter()
    if s is None:
        return out, drops
    pairs = []
    need = {"text_column": s.text_column, "target_column": s.target_column}
    for _, row in source_rows(s, "parallel", need):
        src, tgt = row[s.text_column], row[s.target_column]
        if not all(isinstance(x, str) and x.strip() for x in (src, tgt)):
            drops["empty_side"] += 1
        elif src.strip() in held_out:
            drops["held_out_text"] += 1
        else:
            pairs.append({"source": src.strip(), "target": tgt.strip(), "book": "parallel", "chapter": len(pairs) + 1,
                          "verse": 1})  # fmt: skip
    if not pairs:
        fail(f"ingest.parallel: no pairs in {describe(s)} (dropped: {dict(drops) or 'none'})")
    held = set(random.Random(p.seed + 2).sample(range(len(pairs)), min(p.parallel_val_chapters, len(pairs) // 2)))
    for i, pair in enumerate(pairs):
        out["validation" if i in held else "train"].append(pair)
    return out, drops


def run_own(p: IngestParams, out: Path, metrics_path: Path) -> dict:
    """A user's corpus, task and parallel corpus (ingest.source: own) -> the artifacts the bundled data gets."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    task, names, task_counts = own_task(p)  # first: the task is small, and its errors are the likeliest
    held_out = {r["text"] for split in ("validation", "test") for r in task[split]}
    parallel, parallel_drops = own_parallel(p.parallel, held_out, p)
    tally = Counter()
    features = Features({"id": Value("string"), "book": Value("string"), "chapter": Value("int64"),
                         "translation": Value("string"), "text": Value("string")})  # fmt: skip
    pair = Features({"source": Value("string"), "target": Value("string"), "book": Value("string"),
                     "chapter": Value("int64"), "verse": Value("int64")})  # fmt: skip
    label = ClassLabel(names=names)
    task_ds = DatasetDict({k: Dataset.from_list(v).cast_column("label", label) for k, v in task.items()})
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as cache:
        # streamed: rows are written to Arrow files as they are read; a fresh cache so no earlier run is reused
        try:
            corpus = Dataset.from_generator(
                own_corpus, gen_kwargs={"s": p.corpus, "held_out": held_out, "tally": tally},
                features=features, cache_dir=cache,
            )  # fmt: skip
        except ValueError as e:  # datasets: a generator with no row "corresponds to no data"
            if "no data" not in str(e):
                raise
            corpus = []
        if len(corpus) == 0:
            fail(f"ingest.corpus: no documents in {describe(p.corpus)} (dropped: {dict(tally) or 'none'})")
        corpus.save_to_disk(tmp / "corpus")
        task_ds.save_to_disk(tmp / "task")
        # from_dict, not from_list: from_list cannot type an empty split
        parallel_ds = DatasetDict({k: Dataset.from_dict({c: [r[c] for r in v] for c in pair}, features=pair)
                                   for k, v in parallel.items()})  # fmt: skip
        parallel_ds.save_to_disk(tmp / "parallel", num_shards={k: 1 for k in parallel})  # loadable even empty
        write_json(own_splits(task, p), tmp / "splits.json")
        counts = {
            "corpus_documents": len(corpus),
            "corpus_chars": tally.pop("chars", 0),
            "corpus_dropped": dict(sorted(tally.items())),
            "task": {k: len(v) for k, v in task.items()},
            "task_train_per_class": {n: sum(r["label"] == i for r in task["train"]) for i, n in enumerate(names)},
            **task_counts,
            "parallel": {k: len(v) for k, v in parallel.items()},
            "parallel_dropped": dict(sorted(parallel_drops.items())),
        }
        if p.parallel is None:
            counts["parallel_skipped"] = "no parallel corpus (ingest.parallel is null)"
        counts["notes"] = short_classes(task, names, p)
        write_json({**meta(recorded_params(p), **counts), "labels": names}, tmp / "meta.json")
    write_json(counts, metrics_path)
    return counts


def short_classes(task: dict[str, list[dict]], names: list[str], p: IngestParams) -> list[str]:
    """A line per class that has fewer rows than asked for in a split: those there are used, and said so."""
    notes = []
    for split, want in (("train", p.train_per_class), ("validation", p.eval_per_class), ("test", p.test_per_class)):
        if want is None:  # every row of the split: none is short
            continue
        have = Counter(r["label"] for r in task[split])
        notes += [f"{split}: {names[i]!r} has {have[i]} rows of the {want} asked for"
                  for i in range(len(names)) if have[i] < want]  # fmt: skip
    return notes


def undeclared_sources(p: IngestParams, dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """The local files of the own-data sources that no dep of the ingest stage in dvc.yaml covers: DVC would not
    rerun ingest when they change. A hub dataset needs no dep: params.yaml names it."""
    if p.source != "own":
        return []
    sources = {"corpus": p.corpus, "task": p.task, "parallel": p.parallel}
    sources |= {f"task.{k}": getattr(p.task, k) for k in ("validation", "test") if p.task}
    problems = []
    for key, s in sources.items():
        local = [s.files] if s and isinstance(s.files, str) else (s.files if s and s.files else [])
        local += [s.hf] if s and s.hf and Path(s.hf).exists() else []
        for pattern in local:
            base = re.split(r"[*?[]", pattern)[0] or "."  # the folder part before any wildcard
            if not covered_by_deps(base, "ingest", dvc_file):
                problems.append(f"ingest.{key}: {pattern} is outside the ingest stage's deps in {dvc_file} (put it "
                                "under data/own/, or add it to the deps), so DVC would not rerun ingest when it "
                                "changes")  # fmt: skip
    return problems


def main() -> None:
    p = load_params("ingest", IngestParams)
    for problem in undeclared_sources(p):
        fail(problem)
    counts = run(p)
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
