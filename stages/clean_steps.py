"""clean's own datatrove pipeline steps, for what datatrove has no offline step for.

Each is a small `PipelineStep` in datatrove's shape: a reader yields `Document`s, a formatter rewrites `doc.text`,
a filter answers True (keep) or (False, reason). stages/clean.py lists them, with datatrove's own steps, in one
place (`steps()`); the pure text helpers below carry a worked example each.

    CorpusReader   a `datasets` Dataset (save_to_disk) -> Documents, rows sharded contiguously by rank
    RankReader     the `{rank:05d}.jsonl.gz` file an earlier pipeline's rank wrote (missing file: no documents)
    MarkupFormatter markup leftovers stripped, Unicode NFC, whitespace normalised
    EmptyFilter    drops a document with no text left after formatting ("empty")
    LinguaFilter   offline language identification with lingua ("not_english"); datatrove's LanguageFilter
                   downloads a fastText model, which this project cannot do (no network)

and the readers of what the pipelines leave in the work dir (`read_jsonl`, `summarise_drops`), streamed, so
memory stays flat however many documents are dropped.
"""

import gzip
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.readers.base import BaseReader


def normalize_unicode(text: str) -> str:
    """NFC, and typographic spaces/zero-widths removed: 'e\u0301\u200b' -> 'é'."""
    text = unicodedata.normalize("NFC", text)
    return re.sub(r"[\u200b\u200c\u200d\ufeff]", "", text).replace("\u00a0", " ")


def strip_markup(text: str) -> str:
    """Markup leftovers gone, words kept apart: 'God<note>x</note>created' -> 'God created'."""
    text = re.sub(r"<(note|script|style)\b[^>]*>.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"</?[A-Za-z][^<>]*>", " ", text)
    return re.sub(
        r"&(amp|lt|gt|quot|nbsp);", lambda m: {"amp": "&", "lt": "<", "gt": ">", "quot": '"'}.get(m[1], " "), text
    )


def normalize_whitespace(text: str) -> str:
    """One space between words, no blank or padded lines: ' a  b \n\n c ' -> 'a b\nc'."""
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


class CorpusReader(BaseReader):
    """Rows of a saved `datasets` Dataset as Documents; rank r of w reads rows [r*n/w, (r+1)*n/w).

    Contiguous shards keep (rank, position) in the corpus order, so every dedup step keeps the same (first)
    document of a duplicate group whatever the number of tasks. metadata: index (the row number) and shard (the
    rank; not named "rank", which JsonlWriter would take for its filename tag).
    """

    name = "📚 Corpus (datasets)"

    def __init__(self, path: str, text_key: str = "text", id_key: str = "id"):
        super().__init__(text_key=text_key, id_key=id_key)
        self.path = str(path)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datasets import load_from_disk

        ds = load_from_disk(self.path)
        lo, hi = rank * len(ds) // world_size, (rank + 1) * len(ds) // world_size
        for i, row in enumerate(ds.select(range(lo, hi)), start=lo):
            self.stat_update("documents")
            doc = Document(
                text=row[self.text_key] or "", id=str(row[self.id_key]), metadata={"index": i, "shard": rank}
            )
            self.update_doc_stats(doc)
            yield doc


class RankReader(JsonlReader):
    """JsonlReader of exactly this rank's `{rank:05d}.jsonl.gz`, so a later pipeline sees the documents of the
    same rank in the same order (datatrove's dedup filters address documents by rank and position)."""

    name = "🐿 Jsonl (own rank)"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(path):
            yield from self.read_files_shard([path])


class MarkupFormatter(BaseFormatter):
    """Markup leftovers stripped ('<p>a</p>' -> 'a'), NFC, whitespace normalised."""

    name = "🏷 Markup leftovers"

    def format(self, text: str) -> str:
        return normalize_whitespace(strip_markup(normalize_unicode(text)))


class EmptyFilter(BaseFilter):
    """Drops a document whose text is empty after formatting (reason "empty")."""

    name = "🕳 Empty"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if doc.text.strip() else (False, "empty")


class LinguaFilter(BaseFilter):
    """Keeps a document whose most likely language is `keep` with confidence >= min_confidence, else
    (False, "not_english"); doc.metadata gets language and language_score.

    The detector only weighs `languages` (fewer languages: faster and fewer confusions, but a language outside
    the list is forced onto its nearest member, where the confidence threshold still catches most). Low-accuracy
    mode uses trigram models only: several times faster and lighter, reliable on texts over ~120 characters,
    which chapter-length documents are. Only the first `max_chars` characters are read.
    """

    name = "🌍 Language (lingua, offline)"
    _requires_dependencies = [("lingua", "lingua-language-detector")]

    def __init__(self, languages, keep="ENGLISH", min_confidence=0.5, low_accuracy=True, max_chars=2000,
                 exclusion_writer=None):  # fmt: skip
        super().__init__(exclusion_writer)
        self.languages, self.keep = tuple(languages), keep
        self.min_confidence, self.low_accuracy, self.max_chars = min_confidence, low_accuracy, max_chars
        self._detector = None

    @property
    def detector(self):
        """Built on first use, in the worker (the detector is not picklable)."""
        if self._detector is None:
            from lingua import Language, LanguageDetectorBuilder

            builder = LanguageDetectorBuilder.from_languages(*(getattr(Language, name) for name in self.languages))
            self._detector = (builder.with_low_accuracy_mode() if self.low_accuracy else builder).build()
        return self._detector

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        values = self.detector.compute_language_confidence_values(doc.text[: self.max_chars])
        top = values[0] if values else None
        doc.metadata["language"] = top.language.name if top else "UNKNOWN"
        doc.metadata["language_score"] = round(top.value, 4) if top else 0.0
        if top is None or top.language.name != self.keep or top.value < self.min_confidence:
            return False, "not_english"
        return True

    def __getstate__(self):  # the detector stays behind: each worker builds its own
        return {**self.__dict__, "_detector": None}


def document_text(doc: Document) -> str:
    """What exact dedup hashes (ExactDedupConfig.content_getter; its `-> str` annotation picks the hash input)."""
    return doc.text


def document_priority(doc: Document) -> int:
    """Exact dedup keeps the highest priority, then the lowest position *within* a rank: a lower rank first makes
    that the first document in corpus order, whatever the number of tasks (rank 0 -> 65535, rank 1 -> 65534)."""
    return 65535 - doc.metadata["shard"]


def read_jsonl(folder: Path) -> Iterator[dict]:
    """The rows of `folder`'s *.jsonl.gz files, file by file in name (= rank) order; none if it does not exist."""
    for path in sorted(Path(folder).rglob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            yield from map(json.loads, f)


DEDUP_REASON = {"exact_dedup": "exact_duplicate", "minhash": "near_duplicate"}  # their writers set no reason


def summarise_drops(dropped: Path, per_reason: int) -> tuple[dict[str, Counter], list[dict]]:
    """({step: {reason: count}}, the first `per_reason` dropped documents per reason) from work/dropped/<step>/.

    A step's files hold its drops rank by rank, so in corpus order: the samples are the first ones dropped.
    """
    counts, samples, taken = defaultdict(Counter), [], Counter()
    for folder in sorted(Path(dropped).glob("*")):
        for row in read_jsonl(folder):
            reason = DEDUP_REASON.get(folder.name) or row["metadata"].get("filter_reason", folder.name)
            counts[folder.name][reason] += 1
            if taken[reason] < per_reason:
                taken[reason] += 1
                samples.append({"reason": reason, "step": folder.name, "id": row["id"], "text": row["text"]})
    return counts, samples
