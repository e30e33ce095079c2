"""clean: the pre-training corpus, normalised, deduplicated and filtered, with a reason for every drop.

Reads  data/1_ingest/corpus
Writes data/2_clean/corpus        Dataset (id, text), the documents kept
       data/2_clean/dropped.jsonl  a sample of dropped documents per reason, for inspection
       metrics/clean.json          documents and characters in/out, drops per reason

    python -m stages.clean

The steps run in the order of STEPS: normalisers rewrite text, filters answer None (keep) or a reason (drop).
"""

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from stages.common import atomic_dir, fail, load_params, meta, write_json

IN = Path("data/1_ingest/corpus")
OUT = Path("data/2_clean")
METRICS = Path("metrics/clean.json")

# The most frequent English function words: a document in English has many of them, one in another language few.
STOPWORDS = frozenset(
    "the and of to a in that is was he for it with as his on be at by i this had not are but from or have an "
    "they which you were her she there we all their him been has when who will more no if out so what up "
    "said them would my me then your into than our us shall upon unto these those thy thee ye".split()
)


@dataclass(frozen=True)
class CleanParams:
    min_words: int  # shorter documents are dropped (reason too_short)
    max_words: int  # longer ones too (too_long)
    max_symbol_ratio: float  # share of characters that are neither letters nor spaces (symbols)
    min_stopword_ratio: float  # share of words that are English function words (not_english)
    max_duplicate_line_ratio: float  # share of lines repeated within the document (repeated_lines)
    dedup: bool  # drop exact duplicates after normalisation (exact_duplicate)
    sample_per_reason: int  # dropped documents kept per reason in dropped.jsonl

    def validate(self):
        if self.min_words < 0 or self.max_words <= self.min_words:
            yield "min_words/max_words: need 0 <= min_words < max_words"
        for name in ("max_symbol_ratio", "min_stopword_ratio", "max_duplicate_line_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                yield f"{name}: must be in [0, 1], got {getattr(self, name)}"


# --- normalisers: text -> text ---------------------------------------------------------------------------


def normalize_unicode(text: str) -> str:
    """NFC, and typographic spaces/zero-widths removed: 'e\u0301\u200b' -> 'é'."""
    text = unicodedata.normalize("NFC", text)
    return re.sub(r"[\u200b\u200c\u200d\ufeff]", "", text).replace("\u00a0", " ")


def strip_markup(text: str) -> str:
    """Markup leftovers gone, words kept apart: 'God<note>x</note>created' -> 'God created'."""
    text = re.sub(r"<(note|script|style)\b[^>]*>.*?</\1>", " ", text, flags=re.S)
    text = re.sub(r"</?[A-Za-z][^<>]*>", " ", text)
    return re.sub(
        r"&(amp|lt|gt|quot|nbsp);", lambda m: {"amp": "&", "lt": "<", "gt": ">", "quot": '"'}.get(m[1], " "), text
    )


def normalize_whitespace(text: str) -> str:
    """One space between words, no blank or padded lines: ' a  b \n\n c ' -> 'a b\nc'."""
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# --- filters: text -> None (keep) or a reason (drop) ----------------------------------------------------------


def length_filter(text: str, p: CleanParams) -> str | None:
    n = len(text.split())
    return "too_short" if n < p.min_words else "too_long" if n > p.max_words else None


def symbol_filter(text: str, p: CleanParams) -> str | None:
    chars = [c for c in text if not c.isspace()]
    symbols = sum(1 for c in chars if not c.isalpha() and c not in ".,;:!?'’‘“”\"-()")
    return "symbols" if chars and symbols / len(chars) > p.max_symbol_ratio else None


def language_filter(text: str, p: CleanParams) -> str | None:
    words = re.findall(r"[a-záéíóúñü]+", text.lower())
    ratio = sum(w in STOPWORDS for w in words) / max(1, len(words))
    return "not_english" if ratio < p.min_stopword_ratio else None


def repetition_filter(text: str, p: CleanParams) -> str | None:
    lines = text.split("\n")
    dup = len(lines) - len(set(lines))
    return "repeated_lines" if len(lines) > 1 and dup / len(lines) > p.max_duplicate_line_ratio else None


NORMALIZERS = [normalize_unicode, strip_markup, normalize_whitespace]
FILTERS = [length_filter, symbol_filter, language_filter, repetition_filter]
# The params.yaml key that lets more documents through, per drop reason (`empty` has none: the text itself is gone).
LOOSEN = {
    "too_short": "clean.min_words (lower it)",
    "too_long": "clean.max_words (raise it)",
    "symbols": "clean.max_symbol_ratio (raise it)",
    "not_english": "clean.min_stopword_ratio (lower it)",
    "repeated_lines": "clean.max_duplicate_line_ratio (raise it)",
    "exact_duplicate": "clean.dedup (false keeps duplicates)",
}


def clean_documents(docs: list[dict], p: CleanParams) -> tuple[list[dict], list[tuple[str, dict]]]:
    """(kept, dropped): every document normalised, then filtered, then exact-deduplicated, in order.

    dropped holds (reason, document) pairs; the first document of a duplicate group is kept.
    """
    kept, dropped, seen = [], [], set()
    for doc in docs:
        text = doc["text"]
        for normalize in NORMALIZERS:
            text = normalize(text)
        doc = {"id": doc["id"], "text": text}
        reason = "empty" if not text else next((r for f in FILTERS if (r := f(text, p))), None)
        if reason is None and p.dedup:
            digest = hashlib.sha1(text.encode()).digest()
            reason = "exact_duplicate" if digest in seen else None
            seen.add(digest)
        if reason:
            dropped.append((reason, doc))
        else:
            kept.append(doc)
    return kept, dropped


def nothing_kept_message(src: Path, out: Path, drops: Counter) -> str:
    """The one paragraph that says why cleaning kept no document and what to change.

    ('data/1_ingest/corpus', 'data/2_clean', {'too_short': 3}) -> 'data/1_ingest/corpus: cleaning dropped all 3
    documents (too_short: 3) ... loosen in params.yaml: clean.min_words (lower it) ...'
    """
    if not drops:
        return f"{src}: the input holds no documents, so cleaning has nothing to keep; {out} is left as it was."
    counts = ", ".join(f"{reason}: {n}" for reason, n in drops.most_common())
    keys = [LOOSEN[r] for r, _ in drops.most_common() if r in LOOSEN]
    fix = f"loosen in params.yaml: {'; '.join(keys)}" if keys else "nothing in params.yaml keeps them"
    empty = "; `empty` documents have no text left after normalisation: check the input" if "empty" in drops else ""
    return (f"{src}: cleaning dropped all {drops.total()} documents ({counts}), so there is no corpus to write and "
            f"{out} is left as it was. To keep more, {fix}{empty}.")  # fmt: skip


def run(p: CleanParams, src: Path = IN, out: Path = OUT, metrics_path: Path = METRICS) -> dict:
    from datasets import Dataset, load_from_disk

    docs = load_from_disk(str(src)).to_list()
    kept, dropped = clean_documents(docs, p)
    if not kept:  # before anything is written: the previous output and metrics stay
        fail(nothing_kept_message(src, out, Counter(r for r, _ in dropped)))
    samples = defaultdict(list)
    for reason, doc in dropped:
        if len(samples[reason]) < p.sample_per_reason:
            samples[reason].append({"reason": reason, **doc})
    metrics = {
        "documents_in": len(docs),
        "documents_out": len(kept),
        "chars_in": sum(len(d["text"]) for d in docs),
        "chars_out": sum(len(d["text"]) for d in kept),
        "drops": dict(sorted(Counter(r for r, _ in dropped).items())),
    }
    with atomic_dir(out) as tmp:
        Dataset.from_list(kept).save_to_disk(tmp / "corpus")
        with open(tmp / "dropped.jsonl", "w") as f:
            for rows in samples.values():
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_json(meta(p, **metrics), tmp / "meta.json")
    write_json(metrics, metrics_path)
    return metrics


def main() -> None:
    print(json.dumps(run(load_params("clean", CleanParams)), indent=2))


if __name__ == "__main__":
    main()
