"""augment: paraphrase the labeled training verses by back-translation (en -> es -> en), with a quality gate.

Reads  data/1_ingest/task (split train)   text, label, book, chapter, verse
       models/5_translate/{en-es,es-en}    the translators of the translate stage
Writes data/6_augment                      Dataset (save_to_disk): text (the paraphrase), label (the source's, same
                                           ClassLabel), source_text, book, chapter, verse; may be empty
       data/6_augment/samples.jsonl        kept pairs and dropped ones per reason, for inspection
       data/6_augment/meta.json
       metrics/augment.json                sources, generated, kept, drops per reason, sentences per second

    python -m stages.augment

Each verse is translated to Spanish (beam search: the best pivot), then back to English `num_paraphrases` times by
sampling (top-k, top-p, temperature; seeded, so a rerun repeats); other decoding settings (no_repeat_ngram_size)
come from the translators' generation_config. A paraphrase passes the filters of FILTERS in order, each answering
None (keep) or the reason to drop it, then a duplicate check. `sentences_per_second` counts English paraphrases per
second of generation (both passes).
"""

import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.clean import STOPWORDS
from stages.common import atomic_dir, fail, load_params, meta, write_json

TASK = Path("data/1_ingest/task")
MODELS = Path("models/5_translate")
OUT = Path("data/6_augment")
METRICS = Path("metrics/augment.json")
METRIC_MODULES = Path(__file__).resolve().parent.parent / "metric_modules"


@dataclass(frozen=True)
class AugmentParams:
    seed: int
    threads: int  # torch CPU threads; 0 = torch's default (one per core)
    num_paraphrases: int  # sampled back-translations per verse
    pivot_beams: int  # beams for the Spanish pivot (1 = greedy)
    top_k: int  # sampling of the English side: the k likeliest tokens ...
    top_p: float  # ... within this probability mass ...
    temperature: float  # ... sharpened (< 1) or flattened (> 1)
    max_length: int  # tokens per verse, in and out (capped at the translators' positions)
    batch_size: int  # verses per generate call
    min_length_ratio: float  # paraphrase characters / source characters below this: too_short
    max_length_ratio: float  # ... above this: too_long
    min_stopword_ratio: float  # share of English function words below this: not_english
    min_chrf: float  # chrF to the source below this: too_different (meaning lost)
    max_chrf: float  # ... above this: too_similar (adds nothing)
    samples: int  # kept pairs in samples.jsonl, and dropped pairs per reason

    def validate(self):
        for name in ("num_paraphrases", "pivot_beams", "top_k", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if self.threads < 0:
            yield f"threads: must be >= 0, got {self.threads}"
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            yield "top_p/temperature: need 0 < top_p <= 1 and temperature > 0"
        if not 0 <= self.min_length_ratio < self.max_length_ratio:
            yield "min_length_ratio/max_length_ratio: need 0 <= min_length_ratio < max_length_ratio"
        if not 0 <= self.min_chrf < self.max_chrf <= 100:
            yield "min_chrf/max_chrf: need 0 <= min_chrf < max_chrf <= 100"
        if not 0 <= self.min_stopword_ratio <= 1:
            yield f"min_stopword_ratio: must be in [0, 1], got {self.min_stopword_ratio}"


# --- filters: a candidate {text, source_text, chrf} -> None (keep) or a reason (drop) ---------------------------


def words(text: str) -> list[str]:
    """Lowercased words, punctuation gone: words("God said, “Let") -> ["god", "said", "let"]."""
    return re.findall(r"\w+", text.casefold())


def identical_filter(c: dict, p: AugmentParams) -> str | None:
    """The source again, up to case and punctuation."""
    return "identical_to_source" if words(c["text"]) == words(c["source_text"]) else None


def length_filter(c: dict, p: AugmentParams) -> str | None:
    """Length in characters relative to the source (as gate.augment measures it): a truncated or looping
    translation falls out of bounds.
    """
    ratio = len(c["text"]) / max(1, len(c["source_text"]))
    return "too_short" if ratio < p.min_length_ratio else "too_long" if ratio > p.max_length_ratio else None


def language_filter(c: dict, p: AugmentParams) -> str | None:
    """Too few English function words (stages.clean.STOPWORDS): Spanish left over, or gibberish."""
    ws = words(c["text"])
    return "not_english" if sum(w in STOPWORDS for w in ws) / max(1, len(ws)) < p.min_stopword_ratio else None


def similarity_filter(c: dict, p: AugmentParams) -> str | None:
    """chrF (0-100) to the source outside [min_chrf, max_chrf]."""
    return "too_different" if c["chrf"] < p.min_chrf else "too_similar" if c["chrf"] > p.max_chrf else None


FILTERS = [identical_filter, length_filter, language_filter, similarity_filter]


def quality_gate(candidates: list[dict], p: AugmentParams) -> tuple[list[dict], list[tuple[str, dict]]]:
    """(kept, dropped): each candidate through FILTERS in order, then dropped as `duplicate` if an earlier kept
    paraphrase has the same words. dropped holds (reason, candidate) pairs.
    """
    kept, dropped, seen = [], [], set()
    for c in candidates:
        reason = next((r for f in FILTERS if (r := f(c, p))), None)
        if reason is None:
            key = tuple(words(c["text"]))
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason:
            dropped.append((reason, c))
        else:
            kept.append(c)
    return kept, dropped


# --- generation -----------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], max_length: int, batch_size: int, **kwargs) -> list[list[str]]:
    """For each text, its translations (num_return_sequences of them); batches of similar length, input order."""
    model.eval()
    k = kwargs.get("num_return_sequences", 1)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[str]] = [[] for _ in texts]
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        ids = model.generate(**enc.to(model.device), max_new_tokens=max_length, **kwargs)  # (B * k, T)
        decoded = [s.strip() for s in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        for j, i in enumerate(idx):
            out[i] = decoded[j * k : (j + 1) * k]
    return out


def back_translate(en_es, es_en, tokenizer, texts: list[str], p: AugmentParams) -> list[list[str]]:
    """num_paraphrases English paraphrases per text: a beam-searched Spanish pivot, sampled back to English."""
    max_length = min(p.max_length, en_es.config.max_position_embeddings, es_en.config.max_position_embeddings)
    pivot = generate(en_es, tokenizer, texts, max_length, p.batch_size, num_beams=p.pivot_beams)
    torch.manual_seed(p.seed)
    return generate(
        es_en, tokenizer, [s[0] for s in pivot], max_length, p.batch_size, do_sample=True, top_k=p.top_k,
        top_p=p.top_p, temperature=p.temperature, num_return_sequences=p.num_paraphrases, num_beams=1,
    )  # fmt: skip


def chrf_to_source(texts: list[str], sources: list[str]) -> list[float]:
    """Sentence chrF of each text against its source, by the repo's chrf module."""
    import evaluate

    if not texts:
        return []
    chrf = evaluate.load(str(METRIC_MODULES / "chrf"))
    return chrf.compute(predictions=texts, references=sources, sentence_scores=True)["sentence_chrf"]


def run(
    p: AugmentParams, task: Path = TASK, models: Path = MODELS, out: Path = OUT, metrics_path: Path = METRICS
) -> dict:
    from datasets import Dataset, Features, Value, load_from_disk
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if p.threads:
        torch.set_num_threads(p.threads)
    train = load_from_disk(str(task))["train"]
    for name in ("en-es", "es-en"):
        if not (models / name / "config.json").exists():
            fail(f"{models / name}: no translator; run `python -m stages.translate` first")
    tokenizer = AutoTokenizer.from_pretrained(models / "en-es")
    en_es = AutoModelForSeq2SeqLM.from_pretrained(models / "en-es")
    es_en = AutoModelForSeq2SeqLM.from_pretrained(models / "es-en")

    rows = train.to_list()
    t0 = time.time()
    paraphrases = back_translate(en_es, es_en, tokenizer, [r["text"] for r in rows], p)
    seconds = time.time() - t0
    candidates = [
        {"text": text, "label": r["label"], "source_text": r["text"], "book": r["book"], "chapter": r["chapter"],
         "verse": r["verse"]}
        for r, texts in zip(rows, paraphrases, strict=True) for text in texts
    ]  # fmt: skip
    scores = chrf_to_source([c["text"] for c in candidates], [c["source_text"] for c in candidates])
    for c, s in zip(candidates, scores, strict=True):
        c["chrf"] = round(s, 2)
    kept, dropped = quality_gate(candidates, p)

    label = train.features["label"]
    columns = ["text", "label", "source_text", "book", "chapter", "verse"]
    features = Features({"text": Value("string"), "label": label, "source_text": Value("string"),
                         "book": Value("string"), "chapter": Value("int64"), "verse": Value("int64")})  # fmt: skip
    dataset = Dataset.from_dict({col: [c[col] for c in kept] for col in columns}, features=features)
    metrics = {
        "sources": len(rows),
        "generated": len(candidates),
        "kept": len(kept),
        "drops": dict(sorted(Counter(r for r, _ in dropped).items())),
        "kept_per_label": {name: sum(c["label"] == i for c in kept) for i, name in enumerate(label.names)},
        "sentences_per_second": round(len(candidates) / max(seconds, 1e-9), 2),
    }
    samples = [{"status": "kept", **c} for c in kept[:: max(1, len(kept) // max(1, p.samples))][: p.samples]]
    per_reason = defaultdict(list)
    for reason, c in dropped:
        if len(per_reason[reason]) < p.samples:
            per_reason[reason].append({"status": "dropped", "reason": reason, **c})
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp), num_shards=1)  # one shard even when empty: zero shards cannot be loaded
        with open(tmp / "samples.jsonl", "w") as f:
            for row in samples + [r for rs in per_reason.values() for r in rs]:
                f.write(json.dumps({**row, "label": label.int2str(row["label"])}, ensure_ascii=False) + "\n")
        write_json(meta(p, **metrics), tmp / "meta.json")
    write_json(metrics, metrics_path)
    return metrics


def main() -> None:
    print(json.dumps(run(load_params("augment", AugmentParams)), indent=2))


if __name__ == "__main__":
    main()
