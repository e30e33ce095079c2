"""clean: the pre-training corpus, repaired, filtered and deduplicated by datatrove, with a reason for every drop.

Reads  data/1_ingest/corpus
Writes data/2_clean/corpus         Dataset (id, text), the documents kept, in corpus order
       data/2_clean/dropped.jsonl  the first clean.sample_per_reason dropped documents per reason, for inspection
       data/2_clean/meta.json      params, counts, library versions
       metrics/clean.json          documents and bytes in/out, drops per reason and per step, seconds

    python -m stages.clean    # bundled corpus: 1,901 of 1,902 chapters kept, no duplicate among them (WEB Psalm
                              # 117 has none of Gopher's stop words); ~1.5 min on one core

The steps are datatrove pipeline steps, listed in order in `steps()`: formatters rewrite text (ftfy, markup
leftovers, PII), filters keep or drop with a reason (empty, language, C4, Gopher repetition and quality, FineWeb),
then exact dedup and MinHash near-dedup, each in datatrove's multi-stage form. `pipelines()` chains them into
datatrove executors that hand over through files in a work dir (a system temp folder, removed at the end;
`clean.work_dir` names a big or shared one for Slurm/Ray), so a killed run leaves the last output untouched.

Scale-out: `clean.executor` is local (LocalPipelineExecutor, `clean.tasks` shards run by `clean.workers`
processes), slurm (SlurmPipelineExecutor: one array job per pipeline, chained by --dependency, `clean.slurm.*`)
or ray (RayPipelineExecutor on the cluster `ray.init()` finds, `clean.ray.*`). Rows are sharded contiguously, so
a document's (rank, position) follows corpus order whatever the tasks: exact dedup keeps the first of a group,
MinHash the same one of a cluster, and the kept documents, streamed rank by rank (so by row number) into Arrow,
are byte-identical for any tasks/workers (tests/stages/test_clean.py checks 1/1 against 3/2). Nothing holds the
corpus in memory: datatrove streams, and the kept documents go from its files to Arrow in batches.
"""

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stages.common import atomic_dir, fail, meta, write_json
from stages.presets import load_params

IN = Path("data/1_ingest/corpus")
OUT = Path("data/2_clean")
METRICS = Path("metrics/clean.json")

# The most frequent English function words; the clean gate (stages/suites.py) checks kept documents with them.
STOPWORDS = frozenset(
    "the and of to a in that is was he for it with as his on be at by i this had not are but from or have an "
    "they which you were her she there we all their him been has when who will more no if out so what up "
    "said them would my me then your into than our us shall upon unto these those thy thee ye".split()
)


@dataclass(frozen=True)
class LanguageParams:
    enabled: bool
    languages: list[str]  # lingua Language names the detector weighs; English must be one
    min_confidence: float  # top language's confidence, in [0, 1]
    low_accuracy: bool  # trigram models only: several times faster, fine on texts over ~120 characters
    max_chars: int  # only the start of a document is read


@dataclass(frozen=True)
class GopherRepetitionParams:  # keys are datatrove's GopherRepetitionFilter arguments
    enabled: bool
    dup_line_frac: float
    dup_para_frac: float
    dup_line_char_frac: float
    dup_para_char_frac: float
    top_n_grams: list[list[float]]  # [n, max share of characters in the most frequent n-gram]
    dup_n_grams: list[list[float]]  # [n, max share of characters in repeated n-grams]


@dataclass(frozen=True)
class GopherQualityParams:  # datatrove's GopherQualityFilter arguments
    enabled: bool
    min_doc_words: int
    max_doc_words: int
    min_avg_word_length: float
    max_avg_word_length: float
    max_symbol_word_ratio: float
    max_bullet_lines_ratio: float
    max_ellipsis_lines_ratio: float
    max_non_alpha_words_ratio: float  # in fact a minimum: share of words holding a letter
    min_stop_words: int


@dataclass(frozen=True)
class C4Params:  # datatrove's C4QualityFilter arguments (a -1 disables a count)
    enabled: bool
    filter_no_terminal_punct: bool
    min_num_sentences: int
    min_words_per_line: int
    max_word_length: int
    remove_citations: bool
    filter_lorem_ipsum: bool
    filter_javascript: bool
    filter_curly_bracket: bool
    filter_policy: bool


@dataclass(frozen=True)
class FineWebParams:  # datatrove's FineWebQualityFilter arguments
    enabled: bool
    line_punct_thr: float
    short_line_thr: float
    short_line_length: int
    char_duplicates_ratio: float
    new_line_ratio: float


@dataclass(frozen=True)
class MinhashParams:
    enabled: bool
    n_grams: int  # words per shingle
    buckets: int  # LSH bands; a pair is compared when one band matches
    hashes_per_bucket: int  # rows per band; similarity threshold ~ (1/buckets)^(1/hashes_per_bucket)
    seed: int


@dataclass(frozen=True)
class SlurmParams:  # SlurmPipelineExecutor arguments
    partition: str
    time: str
    cpus_per_task: int
    mem_per_cpu_gb: int
    venv_path: str | None


@dataclass(frozen=True)
class RayParams:  # RayPipelineExecutor arguments
    cpus_per_task: int
    mem_per_cpu_gb: float


@dataclass(frozen=True)
class CleanParams:
    executor: str  # local | slurm | ray
    tasks: int  # shards of the corpus; every streaming pipeline runs this many tasks
    workers: int  # tasks run at once (local and ray)
    work_dir: str | None  # where datatrove's intermediate files go (a fresh subfolder); null: system temp
    sample_per_reason: int  # dropped documents kept per reason in dropped.jsonl
    ftfy: bool
    markup: bool
    pii: bool
    language: LanguageParams
    gopher_repetition: GopherRepetitionParams
    gopher_quality: GopherQualityParams
    c4: C4Params
    fineweb: FineWebParams
    exact_dedup: bool
    minhash: MinhashParams
    slurm: SlurmParams
    ray: RayParams

    def validate(self):
        if self.executor not in ("local", "slurm", "ray"):
            yield f"executor: one of local, slurm, ray, got {self.executor!r}"
        if self.tasks < 1 or self.workers < 1:
            yield "tasks/workers: need at least 1"
        if self.language.enabled and "ENGLISH" not in self.language.languages:
            yield "language.languages: must hold ENGLISH"
        if not 0 <= self.language.min_confidence <= 1:
            yield f"language.min_confidence: must be in [0, 1], got {self.language.min_confidence}"


def datatrove_kwargs(section) -> dict:
    """A params section as the keyword arguments of its datatrove step: `enabled` out, pairs as tuples."""
    kwargs = {k: v for k, v in dataclasses.asdict(section).items() if k != "enabled"}
    return {k: tuple((int(n), frac) for n, frac in v) if k.endswith("_n_grams") else v for k, v in kwargs.items()}


def steps(p: CleanParams, work: Path) -> list[tuple[str, object]]:
    """(name, step) of every per-document step, in order: formatters first, then filters, each filter with a writer
    of what it drops (work/dropped/<name>). The one place that lists them; `pipelines()` adds the reader, the
    writers and the dedup stages. C4 runs first among the quality filters as it rewrites text (drops citation and
    policy lines): the filters after it then share one spaCy tokenisation of the final text (datatrove caches it).
    """
    from datatrove.pipeline import filters as f
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter

    from stages.clean_steps import EmptyFilter, LinguaFilter, MarkupFormatter

    def kw(section, name):
        return {**datatrove_kwargs(section), "exclusion_writer": dropped_writer(work, name)}

    every = [
        ("ftfy", p.ftfy, lambda: FTFYFormatter()),
        ("markup", p.markup, lambda: MarkupFormatter()),
        ("pii", p.pii, lambda: PIIFormatter()),
        ("empty", True, lambda: EmptyFilter(exclusion_writer=dropped_writer(work, "empty"))),
        ("language", p.language.enabled, lambda: LinguaFilter(**kw(p.language, "language"))),
        ("c4", p.c4.enabled, lambda: f.C4QualityFilter(**kw(p.c4, "c4"))),
        ("gopher_repetition", p.gopher_repetition.enabled,
         lambda: f.GopherRepetitionFilter(**kw(p.gopher_repetition, "gopher_repetition"))),
        ("gopher_quality", p.gopher_quality.enabled,
         lambda: f.GopherQualityFilter(**kw(p.gopher_quality, "gopher_quality"))),
        ("fineweb", p.fineweb.enabled, lambda: f.FineWebQualityFilter(**kw(p.fineweb, "fineweb"))),
    ]  # fmt: skip
    return [(name, make()) for name, on, make in every if on]


def dropped_writer(work: Path, step: str):
    """Where `step` writes the documents it drops: work/dropped/<step>/<rank>.jsonl.gz."""
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(work / "dropped" / step))


def pipelines(p: CleanParams, src: Path, work: Path) -> list[tuple[str, list, int]]:
    """(name, steps, tasks) of each datatrove pipeline, in the order they must run; they hand over through files.

    filter -> [exact_signatures -> exact_find] -> [minhash_signatures -> minhash_buckets -> minhash_cluster] -> kept
    """
    from datatrove.pipeline import dedup
    from datatrove.pipeline.writers import JsonlWriter

    from stages.clean_steps import CorpusReader, RankReader, document_priority, document_text

    # absolute: Ray runs tasks in the folder its raylet started in (datatrove's own paths are absolute already)
    head, out, n = [CorpusReader(str(Path(src).absolute())), *(step for _, step in steps(p, work))], [], p.tasks
    filtered, deduped, ex, mh = (str(work / d) for d in ("filtered", "deduped", "exact", "minhash"))
    if p.exact_dedup:
        config = dedup.ExactDedupConfig(content_getter=document_text, document_priority=document_priority)
        out += [
            ("filter", [*head, JsonlWriter(filtered)], n),
            ("exact_signatures", [RankReader(filtered), dedup.ExactDedupSignature(f"{ex}/sigs", config)], n),
            ("exact_find", [dedup.ExactFindDedups(f"{ex}/sigs", f"{ex}/dups", config=config)], 1),
        ]
        head = [
            RankReader(filtered),
            dedup.ExactDedupFilter(f"{ex}/dups", config, dropped_writer(work, "exact_dedup")),
        ]
    if p.minhash.enabled:
        m = p.minhash
        config = dedup.MinhashConfig(m.n_grams, m.buckets, m.hashes_per_bucket, m.seed)
        out += [
            (
                "minhash_signatures",
                [*head, JsonlWriter(deduped), dedup.MinhashDedupSignature(f"{mh}/sigs", config)],
                n,
            ),
            ("minhash_buckets", [dedup.MinhashDedupBuckets(f"{mh}/sigs", f"{mh}/buckets", config=config)], m.buckets),
            ("minhash_cluster", [dedup.MinhashDedupCluster(f"{mh}/buckets", f"{mh}/remove", config=config)], 1),
        ]
        head = [RankReader(deduped), dedup.MinhashDedupFilter(f"{mh}/remove", dropped_writer(work, "minhash"))]
    return [*out, ("kept", [*head, JsonlWriter(str(work / "kept"))], n)]


def executor(p: CleanParams, name: str, pipeline: list, tasks: int, logs: Path, depends=None):
    """The datatrove executor `clean.executor` names, for one pipeline (started by .run(), not here)."""
    common = dict(tasks=tasks, logging_dir=str(logs / name), depends=depends)
    if p.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        s = p.slurm
        return SlurmPipelineExecutor(pipeline, **common, time=s.time, partition=s.partition, job_name=f"clean_{name}",
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
                                     venv_path=s.venv_path)  # fmt: skip
    if p.executor == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(pipeline, **common, workers=min(p.workers, tasks),
                                   cpus_per_task=p.ray.cpus_per_task, mem_per_cpu_gb=p.ray.mem_per_cpu_gb)  # fmt: skip
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline, **common, workers=min(p.workers, tasks), start_method="fork")


def run_datatrove(p: CleanParams, src: Path, work: Path) -> None:
    """Every pipeline run to completion, in order (Slurm: submitted as a dependency chain, then waited for).

    A failed task stops the run with an error: datatrove's Ray executor logs it and returns, and Slurm keeps the
    jobs after a failed one pending for ever, so both would otherwise leave the next step waiting for good.
    """
    if p.executor == "ray" and importlib.util.find_spec("ray") is None:  # datatrove builds the executor without it
        fail("clean.executor: ray, but the `ray` package is not installed here; `pip install 'ray[default]'` on the "
             "machine that submits (a Ray cluster's head or a client), or set clean.executor: local")  # fmt: skip
    chain, last = {}, None
    for name, pipeline, tasks in pipelines(p, src, work):
        last = chain[name] = executor(p, name, pipeline, tasks, work / "logs", depends=last)
        if p.executor != "slurm":
            last.run()
            if failed := last.get_incomplete_ranks():
                fail(f"clean: pipeline {name}: task(s) {failed} of {tasks} failed, with the error logged above")
    if p.executor == "slurm":
        last.run()  # submits the whole chain
        while last.get_incomplete_ranks():
            if failed := slurm_failed(chain, work / "logs"):
                subprocess.run(["scancel", *(str(ex.job_id) for ex in chain.values())], capture_output=True)
                fail(failed)
            time.sleep(30)


# Slurm job states after which a job's ranks never complete.
SLURM_FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def slurm_failed(chain: dict, logs: Path) -> str | None:
    """Why the chain of Slurm jobs {pipeline: executor} will not finish, None while it may: a job failed (Slurm
    keeps the jobs after it pending for ever), or none of them is known to Slurm any more."""
    ids = {str(ex.job_id): name for name, ex in chain.items() if ex.job_id not in (None, -1)}
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%F %T", "-j", ",".join(ids)], capture_output=True,
                         text=True).stdout  # fmt: skip
    states = {}  # array job id -> the states of its tasks
    for job, state in (line.split() for line in out.splitlines()):
        states.setdefault(job, set()).add(state)
    for job, name in ids.items():
        if states.get(job, set()) & SLURM_FAILED:
            log = sorted((logs / name / "slurm_logs").glob("*.out"))
            tail = " | ".join(log[0].read_text().splitlines()[-3:]) if log else "no log"
            return f"clean: the Slurm job of pipeline {name} failed ({tail})"
    if not states and list(chain.values())[-1].get_incomplete_ranks():
        return "clean: the Slurm jobs left the queue with the last pipeline's tasks unfinished"
    return None


# The params.yaml key that lets more documents through, per drop reason (`empty` has none: the text itself is gone).
LOOSEN = {
    "not_english": "clean.language.min_confidence (lower it)",
    "gopher_short_doc": "clean.gopher_quality.min_doc_words (lower it)",
    "gopher_long_doc": "clean.gopher_quality.max_doc_words (raise it)",
    "gopher_below_alpha_threshold": "clean.gopher_quality.max_non_alpha_words_ratio (lower it)",
    "gopher_enough_stop_words": "clean.gopher_quality.min_stop_words (lower it)",
    "too_few_sentences": "clean.c4.min_num_sentences (lower it)",
    "char_dup_ratio": "clean.fineweb.char_duplicates_ratio (raise it)",
    "exact_duplicate": "clean.exact_dedup (false keeps duplicates)",
    "near_duplicate": "clean.minhash.hashes_per_bucket (raise it) or clean.minhash.enabled",
}
STEP_OF = {"gopher_": "gopher_quality", "top_": "gopher_repetition", "dup": "gopher_repetition"}


def loosen(reason: str) -> str | None:
    """The params key to loosen for a drop reason: 'gopher_short_doc' -> 'clean.gopher_quality.min_doc_words ...'."""
    if reason in LOOSEN or reason == "empty":
        return LOOSEN.get(reason)
    step = next((s for prefix, s in STEP_OF.items() if reason.startswith(prefix)), None)
    return f"clean.{step} (its thresholds)" if step else "the clean.c4 / clean.fineweb thresholds"


def nothing_kept_message(src: Path, out: Path, drops: Counter) -> str:
    """The one paragraph that says why cleaning kept no document and what to change.

    ('data/1_ingest/corpus', 'data/2_clean', {'gopher_short_doc': 3}) -> 'data/1_ingest/corpus: cleaning dropped
    all 3 documents (gopher_short_doc: 3) ... loosen in params.yaml: clean.gopher_quality.min_doc_words (lower it)'
    """
    if not drops:
        return f"{src}: the input holds no documents, so cleaning has nothing to keep; {out} is left as it was."
    counts = ", ".join(f"{reason}: {n}" for reason, n in drops.most_common())
    keys = list(dict.fromkeys(k for r, _ in drops.most_common() if (k := loosen(r))))
    fix = f"loosen in params.yaml: {'; '.join(keys)}" if keys else "nothing in params.yaml keeps them"
    empty = "; `empty` documents have no text left after normalisation: check the input" if "empty" in drops else ""
    return (f"{src}: cleaning dropped all {drops.total()} documents ({counts}), so there is no corpus to write and "
            f"{out} is left as it was. To keep more, {fix}{empty}.")  # fmt: skip


# What decides which documents are kept; the rest (how it runs, where, the sample size) leaves the corpus alone.
RUN_ONLY = ("executor", "tasks", "workers", "work_dir", "sample_per_reason", "slurm", "ray")


def output_fingerprint(p: CleanParams, input_fingerprint: str) -> str:
    """The kept corpus's `datasets` fingerprint: from the input's and the params that decide the output, so the
    same input and params give byte-identical files whatever the executor, tasks or workers."""
    decides = {k: v for k, v in dataclasses.asdict(p).items() if k not in RUN_ONLY}
    blob = json.dumps({"input": input_fingerprint, "clean": decides}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def in_corpus_order(rows, tally: Counter):
    """The kept rows as {id, text}, checked to follow corpus order, their count and bytes added to `tally`.

    Shards are contiguous and read rank by rank (read_jsonl), so the row numbers rise; streamed, never gathered.
    """
    last = -1
    for r in rows:
        index = r["metadata"]["index"]
        if index <= last:
            raise RuntimeError(f"clean: kept documents out of corpus order (row {index} after {last})")
        last = index
        tally["documents"] += 1
        tally["bytes"] += len(r["text"].encode())
        yield {"id": r["id"], "text": r["text"]}


def write_corpus(rows, path: Path, fingerprint: str, cache: Path, tally: Counter):
    """Streams rows into a Dataset saved at `path` (Arrow, written in batches: memory stays flat)."""
    from datasets import Dataset, Features, Value

    ds = Dataset.from_generator(in_corpus_order, gen_kwargs={"rows": rows, "tally": tally}, cache_dir=str(cache),
                                features=Features({"id": Value("string"), "text": Value("string")}),
                                fingerprint=fingerprint)  # fmt: skip
    ds.save_to_disk(path)


def run(p: CleanParams, src: Path = IN, out: Path = OUT, metrics_path: Path = METRICS) -> dict:
    from datasets import load_from_disk

    from stages.clean_steps import read_jsonl, summarise_drops

    start, corpus = time.perf_counter(), load_from_disk(str(src))
    if not len(corpus):
        fail(nothing_kept_message(src, out, Counter()))
    bytes_in = sum(len(t.encode()) for batch in corpus.iter(batch_size=1024) for t in batch["text"])  # streamed
    # a fresh folder each run (datatrove skips tasks it finds completed), never inside the repo: nothing to ignore
    work = Path(tempfile.mkdtemp(prefix="clean-work-", dir=p.work_dir))
    try:
        dt_start = time.perf_counter()
        run_datatrove(p, src, work)
        dt_seconds = time.perf_counter() - dt_start
        per_step, samples = summarise_drops(work / "dropped", p.sample_per_reason)
        reasons = sum(per_step.values(), Counter())
        if not any(read_jsonl(work / "kept")):  # before anything is written: the previous output and metrics stay
            fail(nothing_kept_message(src, out, reasons))
        kept = Counter()
        with atomic_dir(out) as tmp:
            fp = output_fingerprint(p, corpus._fingerprint)
            write_corpus(read_jsonl(work / "kept"), tmp / "corpus", fp, work / "arrow", kept)
            with open(tmp / "dropped.jsonl", "w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in samples)
            metrics = {
                "documents_in": len(corpus),
                "documents_out": kept["documents"],
                "bytes_in": bytes_in,
                "bytes_out": kept["bytes"],
                "drops": dict(sorted(reasons.items())),
                "drops_per_step": {s: dict(sorted(c.items())) for s, c in sorted(per_step.items())},
            }
            write_json(meta(p, **metrics), tmp / "meta.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics["seconds"] = round(time.perf_counter() - start, 2)  # measurements: after meta.json, never in it
    metrics["datatrove"] = {"seconds": round(dt_seconds, 2)}  # nested: MEASURED strips "seconds" at any depth
    write_json(metrics, metrics_path)
    return metrics


def main() -> None:
    print(json.dumps(run(load_params("clean", CleanParams)), indent=2))


if __name__ == "__main__":
    main()
