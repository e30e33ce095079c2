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
"""

import gzip
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from stages.common import atomic_dir, fail, load_params, meta, write_json

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
    eval_per_class: int  # verses per genre in validation and test (balanced; fewer if a genre has fewer)
    corpus_translations: list[str]  # English translations whose chapters form the pre-training corpus
    task_translation: str  # translation of the task's verses
    parallel_source: str  # parallel corpus: source (English) ...
    parallel_target: str  # ... and target (Spanish) translation
    parallel_val_chapters: int  # training chapters kept out of the parallel train split to score translators

    def validate(self):
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            yield "val_fraction/test_fraction: each in (0, 1) and summing below 1"
        if self.train_per_class < 1 or self.eval_per_class < 1:
            yield "train_per_class/eval_per_class: must be >= 1"


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


def sample_per_class(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Up to n rows per label, in a seeded random order, sorted back into canonical order."""
    by_label = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    picked = []
    for label in sorted(by_label):
        group = by_label[label]
        picked += rng.sample(group, min(n, len(group)))
    return sorted(picked, key=lambda r: r["order"])


def build_task(rows: list[dict], split: dict, p: IngestParams) -> dict[str, list[dict]]:
    """Verse -> genre examples: a small balanced train set, balanced validation and test sets, and the pool."""
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
        "test": sample_per_class([r for r in by_split["test"] if r["text"] not in train_texts], p.eval_per_class, rng),
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


def run(p: IngestParams, raw: Path = RAW, out: Path = OUT, metrics_path: Path = METRICS) -> dict:
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
        write_json({**meta(p, **counts), "labels": LABELS, "genres": GENRES}, tmp / "meta.json")
    write_json(counts, metrics_path)
    return counts


def main() -> None:
    counts = run(load_params("ingest", IngestParams))
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
