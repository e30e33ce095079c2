"""augment: paraphrase the labeled training verses by back-translation (English -> pivot -> English), with a gate.

Reads  data/1_ingest/task (split train)   text, label, book, chapter, verse
       Apertium's modes (augment.translators: apertium, the default)   Debian's apertium-* packages
       models/5_translate/{en-es,es-en}    the translate stage's translators (augment.translators: pipeline; that
                                           stage runs in study/dvc.yaml), or any two seq2seq checkpoints by hub
                                           name or local path
       models/4_pretrain                   the pre-trained causal LM that scores fluency (augment.fluency_model:
                                           pipeline), or any causal LM by hub name or local path
       cache/translations/                 translations of earlier runs (not a DVC output: DVC deletes those)
Writes data/6_augment                      Dataset (save_to_disk): text (the paraphrase), label (the source's, same
                                           ClassLabel), source_text, book, chapter, verse; may be empty
       data/6_augment/samples.jsonl        `samples` random kept pairs (seeded) and dropped ones per reason
       data/6_augment/meta.json            params, counts, library versions; Apertium's package versions
       reports/augment.md                  the same, readable: drops per reason, kept per pivot, the kept pairs
       metrics/augment.json                sources, generated, kept, drops per reason, kept per pivot and label,
                                           translation cache hits/misses, sentences per second (and fluency);
                                           {"skipped": reason, ...} when `pipeline` translators were not trained
                                           (no parallel corpus)

    python -m stages.augment

paraphrase() is the whole computation on rows in memory (the study calls it on its own labeled draws); run() reads
the task, calls it and writes. Translators (`augment.translators`):
- `apertium` (stages/apertium.py): each verse through every pivot of `augment.apertium.pivots` (Spanish, Catalan,
  Galician, Esperanto), one process per pivot and direction for all verses. Rule-based and deterministic: one
  paraphrase per pivot and verse; different pivots give different paraphrases. Unknown words come back bare (as
  `apertium -u`), without Apertium's `*`/`@`/`#` marks. The cache key holds the mode and the installed package
  versions, so a new Apertium retranslates; meta.json records those versions.
- `pipeline` (the translate stage's models, on the CPU) or two seq2seq checkpoints named in `augment.translators`
  (MarianMT, NLLB, M2M100, T5; on the GPU when there is one, bf16 autocast): each verse to Spanish by beam search,
  then back `num_paraphrases` times by sampling (top-k, top-p, temperature; seeded); other decoding settings
  (no_repeat_ngram_size) come from the translators' generation_config. The cache key holds the model files' hash
  (or hub name@commit) and the decoding settings. The English pass samples from one torch stream seeded once per
  run, so a verse's paraphrases depend on every pivot sampled before it: its entries also carry the hash of the
  whole pivot list and are reused only all together (the pivot pass, deterministic, is reused text by text).
A rerun with unchanged inputs translates nothing.

A paraphrase passes the filters of FILTERS in order, each answering None (keep) or the reason to drop it (an empty
verse is `empty_source`, never translated), then a duplicate check, then at most `keep_per_verse` of a verse's
survivors are kept: the most fluent when fluency is scored, else the first generated. Fluency (off by default) is
the paraphrase's perplexity under a causal language model (`fluency_model`: `pipeline` = the pretrain stage's, or
any causal LM) divided by its source verse's, so a long or rare-worded verse is not held against its paraphrases;
above `max_perplexity_ratio` it is `not_fluent`. A masked pretrain model has no perplexity: fluency is then skipped,
and metrics/augment.json says so. `sentences_per_second` counts English paraphrases translated (not read from the
cache) per second of translation (both passes).
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import statistics
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stages import apertium
from stages.clean import STOPWORDS
from stages.common import atomic_dir, covered_by_deps, fail, is_local, load_params, meta, write_json, write_text

TASK = Path("data/1_ingest/task")
MODELS = Path("models/5_translate")
PRETRAIN = Path("models/4_pretrain")  # augment.fluency_model: pipeline
OUT = Path("data/6_augment")
METRICS = Path("metrics/augment.json")
REPORT = Path("reports/augment.md")
CACHE = Path("cache/translations")
DVC_FILE = Path("dvc.yaml")
METRIC_MODULES = Path(__file__).resolve().parent.parent / "metric_modules"


@dataclass(frozen=True)
class Translator:
    """One direction of `augment.translators`: a seq2seq checkpoint and what its family needs to translate."""

    model: str  # hub name ("Helsinki-NLP/opus-mt-en-es") or local folder saved by save_pretrained
    revision: str | None = None  # hub commit, tag or branch; None = the cached/latest one
    src_lang: str | None = None  # NLLB / M2M100: source language of the tokenizer (eng_Latn / en)
    forced_bos_token: str | None = None  # NLLB / M2M100: the target language token (spa_Latn / __es__)
    prefix: str = ""  # T5: the task prefix ("translate English to Spanish: ")


@dataclass(frozen=True)
class Translators:
    en_es: str | Translator  # a bare string = Translator(model=...)
    es_en: str | Translator


@dataclass(frozen=True)
class ApertiumParams:
    pivots: list[str] = field(default_factory=lambda: list(apertium.PIVOTS))  # keys of stages.apertium.PIVOTS

    def validate(self):
        unknown = [p for p in self.pivots if p not in apertium.PIVOTS]
        if unknown or not self.pivots or len(set(self.pivots)) < len(self.pivots):
            yield (f"pivots: {self.pivots} has unknown, repeated or no pivot names; known: "
                   f"{', '.join(f'{k} ({v[0]}/{v[1]})' for k, v in apertium.PIVOTS.items())}")  # fmt: skip


@dataclass(frozen=True)
class AugmentParams:
    seed: int
    threads: int  # torch CPU threads; 0 = torch's default (one per core)
    num_paraphrases: int  # seq2seq translators: sampled back-translations per verse (Apertium: one per pivot)
    pivot_beams: int  # seq2seq: beams for the Spanish pivot (1 = greedy)
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
    drop_repetitive: bool = False  # repetition_filter on
    keep_per_verse: int = 0  # of a verse's paraphrases that pass, at most this many, the most fluent; 0 = all
    fluency_model: str | None = None  # causal LM scoring fluency: "pipeline" = models/4_pretrain, a name/folder, None
    max_perplexity_ratio: float = 0.0  # paraphrase perplexity / source perplexity above this: not_fluent; 0 = off
    translators: str | Translators = "apertium"  # "apertium", "pipeline" = models/5_translate, or {en_es:, es_en:}
    apertium: ApertiumParams = field(default_factory=ApertiumParams)

    def validate(self):
        if isinstance(self.translators, str) and self.translators not in ("apertium", "pipeline"):
            yield (f"translators: 'apertium', 'pipeline' or a mapping {{en_es: ..., es_en: ...}}, got "
                   f"{self.translators!r}")  # fmt: skip
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
        if self.keep_per_verse < 0:
            yield f"keep_per_verse: must be >= 0 (0 = all), got {self.keep_per_verse}"
        if self.max_perplexity_ratio < 0 or (self.max_perplexity_ratio and not self.fluency_model):
            yield (f"max_perplexity_ratio: must be >= 0 (0 = off) and needs a fluency_model, got "
                   f"{self.max_perplexity_ratio} with fluency_model {self.fluency_model!r}")  # fmt: skip


# --- filters: a candidate {text, source_text, chrf} -> None (keep) or a reason (drop) ---------------------------


def words(text: str) -> list[str]:
    """Lowercased words, punctuation gone: words("God said, “Let") -> ["god", "said", "let"]."""
    return re.findall(r"\w+", text.casefold())


def empty_filter(c: dict, p: AugmentParams) -> str | None:
    """A verse with no text (blank after its newlines and spaces): nothing to translate, so never translated."""
    return "empty_source" if not apertium.clean(c["source_text"]) else None


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


def repetition_filter(c: dict, p: AugmentParams) -> str | None:
    """A loop the source does not have: a word said twice in a row ("the dead dead"), or a word pair with a content
    word said more often than in the source ("the dead, the dead"). "Holy, holy, holy" passes when the source has it.
    """
    if not p.drop_repetitive:
        return None
    ws, src = words(c["text"]), words(c["source_text"])
    pairs, src_pairs = Counter(itertools.pairwise(ws)), Counter(itertools.pairwise(src))
    if sum(n for (a, b), n in pairs.items() if a == b) > sum(n for (a, b), n in src_pairs.items() if a == b):
        return "repetitive"
    looped = any(n > 1 and n > src_pairs[pair] and not set(pair) <= STOPWORDS for pair, n in pairs.items())
    return "repetitive" if looped else None


def similarity_filter(c: dict, p: AugmentParams) -> str | None:
    """chrF (0-100) to the source outside [min_chrf, max_chrf]."""
    return "too_different" if c["chrf"] < p.min_chrf else "too_similar" if c["chrf"] > p.max_chrf else None


def fluency_filter(c: dict, p: AugmentParams) -> str | None:
    """Perplexity under the fluency model, relative to the source's (`perplexity_ratio`, None when fluency is off),
    above max_perplexity_ratio: garbled English the other filters let through ("of your servants of the sky, by the
    birds of the earth, according to the flesh of the heavens")."""
    ratio = c.get("perplexity_ratio")
    return "not_fluent" if p.max_perplexity_ratio and ratio is not None and ratio > p.max_perplexity_ratio else None


FILTERS = [
    empty_filter,
    identical_filter,
    length_filter,
    language_filter,
    repetition_filter,
    similarity_filter,
    fluency_filter,
]


def quality_gate(candidates: list[dict], p: AugmentParams) -> tuple[list[dict], list[tuple[str, dict]]]:
    """(kept, dropped): each candidate through FILTERS in order, then dropped as `duplicate` if an earlier kept
    paraphrase has the same words, then as `surplus` beyond the keep_per_verse most fluent (lowest
    perplexity_ratio; in generation order when fluency is off) of its source verse. dropped holds (reason, candidate)
    pairs; kept stays in candidate order.
    """
    passed, dropped, seen = [], [], set()
    for c in candidates:
        reason = next((r for f in FILTERS if (r := f(c, p))), None)
        if reason is None:
            key = tuple(words(c["text"]))
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason:
            dropped.append((reason, c))
        else:
            passed.append(c)
    if not p.keep_per_verse:
        return passed, dropped
    by_verse = defaultdict(list)
    for i, c in enumerate(passed):
        by_verse[c["source_text"]].append(i)
    rank = lambda i: (passed[i].get("perplexity_ratio") or 0.0, i)  # noqa: E731
    chosen = {i for idx in by_verse.values() for i in sorted(idx, key=rank)[: p.keep_per_verse]}
    dropped += [("surplus", c) for i, c in enumerate(passed) if i not in chosen]
    return [c for i, c in enumerate(passed) if i in chosen], dropped


# --- translators ------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A translator ready to generate: model and tokenizer on `device`, and the identity its cache entries carry."""

    model: object
    tokenizer: object
    device: torch.device
    identity: str  # "sha256:<hex>" of a local folder's files, "hub:<name>@<commit>" of a hub checkpoint
    prefix: str = ""
    forced_bos_token_id: int | None = None


def folder_hash(folder: Path) -> str:
    """sha256 over a folder's files (relative name, size, bytes): a local model's identity, weights and config."""
    h = hashlib.sha256()
    for f in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(folder)}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def unreachable(where: str, name: str, error: Exception, what: str = "translator") -> str:
    """The one paragraph a user sees when a hub checkpoint cannot be loaded."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"{where}: cannot load the {what} {name!r}: it is not a local folder, and the Hugging Face hub "
        f"{'is switched off (HF_HUB_OFFLINE is set)' if offline else 'could not be reached'} and its cache does "
        f"not hold it (or no such checkpoint exists). Download it where the hub is reachable "
        f"(`hf download {name}`, which fills the cache this machine reads), or save it with save_pretrained and "
        f"give that folder's path in params.yaml, or unset HF_HUB_OFFLINE if this machine can reach the hub. "
        f"[{type(error).__name__}: {reason}]"
    )


def load_translator(spec: Translator, where: str, dev: torch.device) -> Loaded:
    """A hub name or local folder as a Loaded translator on `dev`; any failure exits with one message."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    local = is_local(spec.model)
    path = Path(spec.model).expanduser()
    if local and not (path / "config.json").exists():
        fail(f"{where}: {spec.model}: not a model folder (no config.json); give a save_pretrained folder or hub name")
    source = str(path) if local else spec.model
    try:
        kwargs = {"src_lang": spec.src_lang} if spec.src_lang else {}
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision, **kwargs)
        model = AutoModelForSeq2SeqLM.from_pretrained(source, revision=spec.revision)
    except OSError as e:
        fail(f"{where}: cannot load {source}: {e}" if local else unreachable(where, spec.model, e))
    except ValueError as e:  # e.g. a causal LM or a classifier
        fail(f"{where}: {spec.model!r} is not a seq2seq translation checkpoint: {str(e).splitlines()[0]}")
    bos = None
    if spec.forced_bos_token:
        bos = tokenizer.convert_tokens_to_ids(spec.forced_bos_token)
        if bos is None or bos == tokenizer.unk_token_id:
            fail(f"{where}.forced_bos_token: {spec.forced_bos_token!r} is not a token of {spec.model}")
    commit = getattr(model.config, "_commit_hash", None) or spec.revision or "unpinned"
    identity = folder_hash(path) if local else f"hub:{spec.model}@{commit}"
    return Loaded(model.to(dev).eval(), tokenizer, dev, identity, spec.prefix, bos)


PIPELINE_NEEDS = (
    f"augment.translators: pipeline needs the translate stage's models, and the augment stage must depend on them: "
    f"run `dvc repro study/dvc.yaml:translate` and add `{MODELS}` to the augment stage's deps in dvc.yaml "
    f"(or use augment.translators: apertium)"
)


def load_translators(p: AugmentParams, models: Path) -> tuple[Loaded, Loaded]:
    """(en_es, es_en): the translate stage's models on the CPU (as always), or the two of augment.translators on
    stages.training.device()."""
    from stages.training import device

    if p.translators == "pipeline":
        cpu = torch.device("cpu")
        return tuple(load_translator(Translator(str(models / n)), f"{models / n}", cpu) for n in ("en-es", "es-en"))
    dev = device()
    specs = {k: Translator(v) if isinstance(v, str) else v for k, v in dataclasses.asdict(p.translators).items()}
    specs = {k: v if isinstance(v, Translator) else Translator(**v) for k, v in specs.items()}
    return load_translator(specs["en_es"], "augment.translators.en_es", dev), load_translator(
        specs["es_en"], "augment.translators.es_en", dev
    )


# --- translation cache ------------------------------------------------------------------------------------------


class TranslationCache:
    """Translations on disk, one JSON file per (model identity, decoding settings, text), under `root`.

    Files are written to a temp name and renamed, so a killed run leaves whole entries or none; an entry that does
    not parse, or holds another key, is ignored with a warning (counted as corrupt) and rewritten. root=None: off.
    """

    def __init__(self, root: Path | None):
        self.root = root
        self.counts = {"pivot": {"hits": 0, "misses": 0}, "back": {"hits": 0, "misses": 0}, "corrupt": 0}

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: dict) -> list[str] | None:
        if self.root is None or not (path := self.path(key)).exists():
            return None
        try:
            entry = json.loads(path.read_text())
            found = entry["translations"]
            if entry["key"] != key or not isinstance(found, list) or not all(isinstance(t, str) for t in found):
                raise ValueError("not the entry of this key")
            return found
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"{path}: corrupt translation cache entry ignored ({e})", stacklevel=2)
            self.counts["corrupt"] += 1
            return None

    def put(self, key: dict, translations: list[str]) -> None:
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "translations": translations}, ensure_ascii=False))
        os.replace(tmp, path)


# --- generation -------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(t: Loaded, texts: list[str], max_length: int, batch_size: int, **kwargs) -> list[list[str]]:
    """For each text, its translations (num_return_sequences of them); batches of similar length, input order."""
    from stages.training import autocast

    k = kwargs.get("num_return_sequences", 1)
    if t.forced_bos_token_id is not None:
        kwargs["forced_bos_token_id"] = t.forced_bos_token_id
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[str]] = [[] for _ in texts]
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = t.tokenizer(
            [t.prefix + texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
            return_tensors="pt",
        )  # fmt: skip
        with autocast(t.device):
            ids = t.model.generate(**enc.to(t.device), max_new_tokens=max_length, **kwargs)  # (B * k, T)
        decoded = [s.strip() for s in t.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        for j, i in enumerate(idx):
            out[i] = decoded[j * k : (j + 1) * k]
    return out


def cached_generate(
    t: Loaded, texts: list[str], cache: TranslationCache, step: str, max_length: int, batch_size: int,
    stream: dict | None = None, **kwargs,
) -> list[list[str]]:  # fmt: skip
    """generate(), reading and filling `cache`; only the texts it lacks are translated.

    stream (seed, ...): the pass samples from one torch stream seeded here, so a text's output depends on every text
    before it: the stream and the text's position go into each key, and one missing entry reruns the whole pass.
    """
    import transformers

    settings = {
        "transformers": transformers.__version__, "device": t.device.type,
        "bf16": t.device.type == "cuda" and torch.cuda.is_bf16_supported(), "prefix": t.prefix,
        "forced_bos_token_id": t.forced_bos_token_id, "max_length": max_length, **kwargs, "stream": stream,
    }  # fmt: skip
    keys = [{"model": t.identity, "settings": settings, "text": text} for text in texts]
    if stream is not None:  # the same text twice in one stream samples twice: position tells them apart
        keys = [{**key, "position": i} for i, key in enumerate(keys)]
    found = [cache.get(key) for key in keys]
    todo = [i for i, f in enumerate(found) if f is None]
    if stream is not None and todo:
        todo = list(range(len(texts)))
        torch.manual_seed(stream["seed"])
    if todo:
        new = generate(t, [texts[i] for i in todo], max_length, batch_size, **kwargs)
        for i, translations in zip(todo, new, strict=True):
            found[i] = translations
            cache.put(keys[i], translations)
    cache.counts[step]["hits"] += len(texts) - len(todo)
    cache.counts[step]["misses"] += len(todo)
    return found


def back_translate(en_es: Loaded, es_en: Loaded, texts: list[str], p: AugmentParams, cache) -> list[list[str]]:
    """num_paraphrases English paraphrases per text: a beam-searched Spanish pivot, sampled back to English."""
    positions = [getattr(t.model.config, "max_position_embeddings", p.max_length) for t in (en_es, es_en)]
    max_length = min(p.max_length, *positions)  # T5 has relative positions: no cap
    pivot = cached_generate(en_es, texts, cache, "pivot", max_length, p.batch_size, num_beams=p.pivot_beams)
    pivots = [s[0] for s in pivot]
    stream = {"seed": p.seed, "batch_size": p.batch_size,
              "pivots": hashlib.sha256(json.dumps(pivots, ensure_ascii=False).encode()).hexdigest()}  # fmt: skip
    return cached_generate(
        es_en, pivots, cache, "back", max_length, p.batch_size, stream, do_sample=True, top_k=p.top_k,
        top_p=p.top_p, temperature=p.temperature, num_return_sequences=p.num_paraphrases, num_beams=1,
    )  # fmt: skip


def cached_apertium(texts: list[str], mode: str, versions: dict, cache: TranslationCache, step: str) -> list[str]:
    """apertium.translate() of the texts, reading and filling `cache` text by text (Apertium is deterministic): the
    key holds the mode, the versions of the engine and pair packages, and the text."""
    keys = [{"model": f"apertium:{mode}", "settings": {"versions": versions}, "text": t} for t in texts]
    found = [(f or [None])[0] for f in map(cache.get, keys)]
    todo = [i for i, f in enumerate(found) if f is None]
    if todo:
        try:
            new = apertium.translate([texts[i] for i in todo], mode)
        except RuntimeError as e:
            fail(f"augment: {e}")
        for i, translation in zip(todo, new, strict=True):
            found[i] = translation
            cache.put(keys[i], [translation])
    cache.counts[step]["hits"] += len(texts) - len(todo)
    cache.counts[step]["misses"] += len(todo)
    return found


def apertium_paraphrases(texts: list[str], pivots: list[str], cache: TranslationCache) -> list[list[tuple[str, str]]]:
    """For each text, (pivot, English round trip through the pivot) for every pivot, in pivot order: two Apertium
    processes per pivot, one per direction, for all the texts."""
    versions = apertium.versions(pivots)
    out = [[] for _ in texts]
    for pivot in pivots:
        there, back, package = apertium.PIVOTS[pivot]
        pinned = {k: versions[k] for k in (*apertium.ENGINE, package)}
        middle = cached_apertium(texts, there, pinned, cache, "pivot")
        english = cached_apertium(middle, back, pinned, cache, "back")
        for paraphrases, text, en in zip(out, texts, english, strict=True):
            paraphrases.append((pivot, apertium.match_case(en, text)))
    return out


def require_translators(p: AugmentParams, models: Path) -> None:
    """Exit with one message when Apertium lacks a pivot's mode, or the translate stage's models are missing."""
    if p.translators == "apertium" and (why := apertium.missing(p.apertium.pivots)):
        fail(f"augment.apertium.pivots: {why}")
    if p.translators == "pipeline" and not all((models / n / "config.json").exists() for n in ("en-es", "es-en")):
        fail(f"{models}: no translators. {PIPELINE_NEEDS}")


def translators(p: AugmentParams, models: Path) -> tuple[Callable, dict]:
    """(back_translate, record): back_translate(texts, cache) gives each text's [(pivot, paraphrase), ...];
    record is what meta.json says of the translators. A missing translator fails here, before any work."""
    require_translators(p, models)
    if p.translators == "apertium":
        record = {"apertium": apertium.versions(p.apertium.pivots)}
        return lambda texts, cache: apertium_paraphrases(texts, p.apertium.pivots, cache), record
    en_es, es_en = load_translators(p, models)
    record = {} if p.translators == "pipeline" else {"translators": {"en_es": en_es.identity, "es_en": es_en.identity}}

    def sampled(texts: list[str], cache: TranslationCache) -> list[list[tuple[str, str]]]:
        return [[("spa", t) for t in ts] for ts in back_translate(en_es, es_en, texts, p, cache)]

    return sampled, record


# --- fluency: perplexity under a causal language model ---------------------------------------------------------


@dataclass
class Scorer:
    """A causal LM that scores fluency, or why there is none (`skipped`)."""

    model: object = None
    tokenizer: object = None
    identity: str = ""  # as Loaded.identity
    skipped: str | None = None


def load_scorer(p: AugmentParams, pretrain: Path) -> Scorer | None:
    """augment.fluency_model as a Scorer on the CPU: `pipeline` is the pretrain stage's model, skipped (with the
    reason) when that is a masked LM, which has no perplexity to score with; None when fluency is off."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not p.fluency_model:
        return None
    where = "augment.fluency_model"
    spec = str(pretrain) if p.fluency_model == "pipeline" else p.fluency_model
    local = p.fluency_model == "pipeline" or is_local(spec)
    path = Path(spec).expanduser()
    if local and not (path / "config.json").exists():
        run_first = "; run `python -m stages.pretrain` first" if p.fluency_model == "pipeline" else ""
        fail(f"{where}: {spec}: not a model folder (no config.json){run_first}")
    source = str(path) if local else spec
    try:
        config = AutoConfig.from_pretrained(source)
        archs = config.architectures or []
        if any(a.endswith("ForMaskedLM") for a in archs):
            return Scorer(skipped=f"{spec} is a masked LM ({archs[0]}): no perplexity to score fluency with; "
                                  f"{where} can name a causal LM instead")  # fmt: skip
        if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise ValueError(f"its architectures are {archs}, none a causal LM (*ForCausalLM, *LMHeadModel)")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except OSError as e:
        fail(f"{where}: cannot load {source}: {e}" if local else unreachable(where, spec, e, "fluency model"))
    except ValueError as e:
        fail(f"{where}: {spec!r} is not a causal language model: {str(e).splitlines()[0]}")
    commit = getattr(model.config, "_commit_hash", None) or "unpinned"
    return Scorer(model.eval(), tokenizer, folder_hash(path) if local else f"hub:{spec}@{commit}")


@torch.no_grad()
def perplexities(scorer: Scorer, texts: list[str], max_length: int, batch_size: int) -> list[float]:
    """Per-text perplexity under the scorer: exp of the mean next-token loss over the text's tokens and a closing
    EOS, each text started by BOS (or EOS, GPT-2's BOS); batches of similar length, input order."""
    from stages.training import pad_batch

    tok = scorer.tokenizer
    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    ids = tok(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    seqs = [([bos] if bos is not None else []) + x + ([eos] if eos is not None else []) for x in ids]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        input_ids, mask = pad_batch([seqs[i] for i in idx], 0)  # (B, T); pads are masked out of the loss below
        logits = scorer.model(input_ids=input_ids, attention_mask=mask).logits.float()  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
        nll = (nll * mask[:, 1:]).sum(1) / mask[:, 1:].sum(1).clamp(min=1)  # (B,)
        for row, i in enumerate(idx):
            out[i] = math.exp(nll[row].item())
    return out


def chrf_to_source(texts: list[str], sources: list[str]) -> list[float]:
    """Sentence chrF of each text against its source, by the repo's chrf module."""
    import evaluate

    if not texts:
        return []
    chrf = evaluate.load(str(METRIC_MODULES / "chrf"))
    return chrf.compute(predictions=texts, references=sources, sentence_scores=True)["sentence_chrf"]


def paraphrase(
    rows: list[dict], p: AugmentParams, cache: Path | None = CACHE, models: Path = MODELS, pretrain: Path = PRETRAIN
) -> tuple[list[dict], list[tuple[str, dict]], dict]:  # fmt: skip
    """Back-translated paraphrases of `rows` through the quality gate: (kept, dropped, stats).

    rows: dicts with text, label, book, chapter, verse (other keys are ignored), e.g. a task split's to_list().
    kept: candidates that passed, in row order, each {text (the paraphrase), label, source_text, book, chapter,
        verse, chrf (to the source, 0-100), pivot ("spa", "cat", "glg", "epo"; "spa" for seq2seq translators)},
        plus perplexity and perplexity_ratio when fluency is scored.
    dropped: (reason, candidate) pairs, reasons as in FILTERS and quality_gate.
    stats: sources, generated (candidates: per row one per pivot, or num_paraphrases), kept, drops (per reason),
        kept_per_pivot, translation_cache (hits/misses per pass: a rerun with unchanged inputs misses none),
        sentences_per_second (paraphrases translated, not read from `cache`, per second), fluency (when on), and
        record (what meta.json says of the translators: Apertium's package versions, or checkpoints' identities).
    Nothing is written but the cache (cache=None: off). A missing translator exits with one message.
    """
    translate_all, record = translators(p, models)  # first: a missing translator fails before any work
    scorer = load_scorer(p, pretrain)
    cache_ = TranslationCache(cache)
    texts = list(dict.fromkeys(r["text"] for r in rows if apertium.clean(r["text"])))  # empty: never translated
    t0 = time.time()
    by_text = dict(zip(texts, translate_all(texts, cache_), strict=True))
    seconds = time.time() - t0
    names = p.apertium.pivots if p.translators == "apertium" else ["spa"] * p.num_paraphrases
    candidates = [
        {"text": text, "label": r["label"], "source_text": r["text"], "book": r["book"], "chapter": r["chapter"],
         "verse": r["verse"], "pivot": pivot}
        for r in rows for pivot, text in by_text.get(r["text"], [(name, "") for name in names])
    ]  # fmt: skip
    scored = [c for c in candidates if c["text"]]
    for c, chrf in zip(scored, chrf_to_source([c["text"] for c in scored], [c["source_text"] for c in scored]),
                       strict=True):  # fmt: skip
        c["chrf"] = round(chrf, 2)
    for c in candidates:
        c.setdefault("chrf", 0.0)
    fluency = score_fluency(scorer, scored, [c["source_text"] for c in scored], p)
    kept, dropped = quality_gate(candidates, p)
    if fluency and not fluency.get("skipped"):
        fluency["kept_median"] = median_ppl(kept)
        fluency["dropped_median"] = median_ppl([c for _, c in dropped if "perplexity" in c])
    per_pass = 1 if p.translators == "apertium" else p.num_paraphrases
    stats = {
        "sources": len(rows),
        "generated": len(candidates),
        "kept": len(kept),
        "drops": dict(sorted(Counter(r for r, _ in dropped).items())),
        "kept_per_pivot": dict(Counter(c["pivot"] for c in kept)),
        **({"fluency": fluency} if fluency else {}),
        "translation_cache": cache_.counts,  # texts per pass: read from the cache, or translated
        "sentences_per_second": round(cache_.counts["back"]["misses"] * per_pass / max(seconds, 1e-9), 2),
        "record": record,
    }
    return kept, dropped, stats


def report(metrics: dict, samples: list[dict], p: AugmentParams) -> str:
    """reports/augment.md: what the gate kept and dropped, per reason and pivot, and the seeded random kept pairs."""
    drops = ", ".join(f"{reason} {n}" for reason, n in metrics["drops"].items()) or "none"
    pivots = ", ".join(f"{pivot} {n}" for pivot, n in metrics.get("kept_per_pivot", {}).items())
    rows = ["| pivot | verse | paraphrase | chrF |", "|---|---|---|---|"]
    rows += [f"| {s['pivot']} | {cell(s['source_text'])} | {cell(s['text'])} | {s['chrf']:.1f} |" for s in samples]
    return "\n".join([
        "# Back-translation", "",
        f"Produced by `python -m stages.augment` (`dvc repro`); numbers from metrics/augment.json. Translators: "
        f"{p.translators if isinstance(p.translators, str) else 'the checkpoints of augment.translators'}.", "",
        f"- Verses: {metrics['sources']}; paraphrases generated: {metrics['generated']}; kept: {metrics['kept']}.",
        f"- Dropped, per reason: {drops}.", *([f"- Kept, per pivot: {pivots}."] if pivots else []), "",
        f"## {len(samples)} kept pairs, drawn at random (seed augment.seed = {p.seed})", "", *rows, "",
    ])  # fmt: skip


def cell(text: str) -> str:
    """Text for a markdown table cell: pipes escaped, on one line."""
    return " ".join(text.split()).replace("|", "\\|")


def run(
    p: AugmentParams, task: Path = TASK, models: Path = MODELS, out: Path = OUT, metrics_path: Path = METRICS,
    cache: Path | None = CACHE, pretrain: Path = PRETRAIN, report_path: Path | None = None,
) -> dict:  # fmt: skip
    from datasets import Dataset, load_from_disk

    if p.threads:
        torch.set_num_threads(p.threads)
    if p.translators == "pipeline" and (reason := translate_skipped(models)):
        why = f"{reason}, and augment.translators is pipeline: no back-translation"
        return skip(why, p, task, out, metrics_path, report_path)
    require_translators(p, models)  # before any work
    train = load_from_disk(str(task))["train"]
    kept, dropped, stats = paraphrase(train.to_list(), p, cache, models, pretrain)
    record = stats.pop("record")
    label = train.features["label"]
    metrics = {**stats, "kept_per_label": {n: sum(c["label"] == i for c in kept) for i, n in enumerate(label.names)}}
    features = output_features(label)
    dataset = Dataset.from_dict({col: [c[col] for c in kept] for col in features}, features=features)
    picked = sorted(random.Random(p.seed).sample(range(len(kept)), min(p.samples, len(kept))))
    samples = [{"status": "kept", **kept[i]} for i in picked]
    per_reason = defaultdict(list)
    for reason, c in dropped:
        if len(per_reason[reason]) < p.samples:
            per_reason[reason].append({"status": "dropped", "reason": reason, **c})
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp), num_shards=1)  # one shard even when empty: zero shards cannot be loaded
        with open(tmp / "samples.jsonl", "w") as f:
            for row in samples + [r for rs in per_reason.values() for r in rs]:
                f.write(json.dumps({**row, "label": label.int2str(row["label"])}, ensure_ascii=False) + "\n")
        write_json({**meta(p, **metrics), **record}, tmp / "meta.json")
    write_json(metrics, metrics_path)
    if report_path is not None:  # the stage's (main) and a caller's that asks; tests leave reports/ alone
        write_text(report(metrics, samples, p), report_path)
    return metrics


def output_features(label):
    """The paraphrase dataset's columns: the task's, and source_text; `label` is the task's ClassLabel."""
    from datasets import Features, Value

    return Features({"text": Value("string"), "label": label, "source_text": Value("string"),
                     "book": Value("string"), "chapter": Value("int64"), "verse": Value("int64")})  # fmt: skip


def score_fluency(scorer: Scorer | None, candidates: list[dict], sources: list[str], p: AugmentParams) -> dict:
    """Sets each candidate's `perplexity` and `perplexity_ratio` (to its source's) under the scorer; returns the
    metrics' `fluency` section: the scorer and the sources' median perplexity, or why it was skipped ({} when off)."""
    if scorer is None:
        return {}
    if scorer.skipped:
        print(f"augment: fluency not scored: {scorer.skipped}")
        return {"skipped": scorer.skipped}
    unique = list(dict.fromkeys(sources))
    ppl = perplexities(scorer, unique + [c["text"] for c in candidates], p.max_length, p.batch_size)
    source_ppl = dict(zip(unique, ppl[: len(unique)], strict=True))
    for c, x in zip(candidates, ppl[len(unique) :], strict=True):
        c["perplexity"] = round(x, 2)
        c["perplexity_ratio"] = round(x / source_ppl[c["source_text"]], 3)
    return {"model": scorer.identity, "source_median": round(statistics.median(source_ppl.values()), 2)}


def median_ppl(candidates: list[dict]) -> float | None:
    """Median perplexity of scored candidates (None when there are none)."""
    return round(statistics.median(c["perplexity"] for c in candidates), 2) if candidates else None


def translate_skipped(models: Path) -> str | None:
    """Why the translate stage made no translators (its meta.json's `counts.skipped`), or None when it made them."""
    info = models / "meta.json"
    return json.loads(info.read_text())["counts"].get("skipped") if info.exists() else None


def skip(
    reason: str, p: AugmentParams, task: Path, out: Path, metrics_path: Path, report_path: Path | None = None
) -> dict:
    """No paraphrases: an empty dataset with the task's columns, and the reason in meta.json and the metrics."""
    from datasets import Dataset, load_from_disk

    features = output_features(load_from_disk(str(task))["train"].features["label"])
    metrics = {"skipped": reason, "sources": 0, "generated": 0, "kept": 0}
    with atomic_dir(out) as tmp:
        Dataset.from_dict({c: [] for c in features}, features=features).save_to_disk(str(tmp), num_shards=1)
        (tmp / "samples.jsonl").write_text("")
        write_json(meta(p, **metrics), tmp / "meta.json")
    write_json(metrics, metrics_path)
    if report_path is not None:
        write_text(f"# Back-translation\n\nSkipped: {reason}.\n", report_path)
    print(f"augment skipped: {reason}")
    return metrics


def undeclared_models(p: AugmentParams, dvc_file: Path = DVC_FILE, models: Path = MODELS) -> list[str]:
    """The local model folders of augment.translators and augment.fluency_model that no dep of the augment stage in
    dvc.yaml covers: DVC would not rerun augment when they change. Hub names need no dep: params.yaml pins them by
    name (and revision). `translators: pipeline` needs models/5_translate as a dep (the translate stage is in
    study/dvc.yaml, outside the default `dvc repro`); `fluency_model: pipeline` has models/4_pretrain in dvc.yaml."""
    problems = (
        [PIPELINE_NEEDS] if p.translators == "pipeline" and not covered_by_deps(models, "augment", dvc_file) else []
    )
    named = {}
    if isinstance(p.translators, Translators):
        for key in ("en_es", "es_en"):
            spec = getattr(p.translators, key)
            named[f"translators.{key}"] = ("translator", spec if isinstance(spec, str) else spec.model)
    if p.fluency_model and p.fluency_model != "pipeline":
        named["fluency_model"] = ("fluency model", p.fluency_model)
    return problems + [
        f"augment.{key}: the local {what} {name} is not a dependency of the augment stage; add it to the stage's "
        f"deps in {dvc_file}, so that DVC reruns augment when the model changes"
        for key, (what, name) in named.items()
        if is_local(name) and not covered_by_deps(name, "augment", dvc_file)
    ]


def main() -> None:
    p = load_params("augment", AugmentParams)
    for problem in undeclared_models(p):
        fail(problem)
    print(json.dumps(run(p, report_path=REPORT), indent=2))


if __name__ == "__main__":
    main()
