"""tokenize: train a byte-level BPE on the clean corpus, pack the corpus into blocks, encode the task.

Reads  data/2_clean/corpus, data/1_ingest/task
Writes data/3_tokenize/tokenizer   a transformers tokenizer (save_pretrained) + vocab_sample.txt
       data/3_tokenize/blocks      DatasetDict train/validation: input_ids of block_size tokens, no padding;
                                   documents are split train/validation before packing
       data/3_tokenize/task        DatasetDict of the task: input_ids (truncated to max_length), label
       metrics/tokenize.json

    python -m stages.tokenize
    python -m stages.tokenize --params tokenize_dapt --out data/3_tokenize_dapt --metrics metrics/tokenize_dapt.json \
        --dvc-file study/dvc.yaml     # another section and output (--help): the corpus in a checkpoint's tokenizer

The corpus streams: the BPE trains on batches of documents, the encoded documents go to a temporary Arrow cache
(memory-mapped, outside the input folder) and the blocks are packed and written a few at a time, so the corpus and its
token ids need not fit in memory. The task is small and is encoded in memory.

The documents are split train/validation first and the BPE is trained on the train documents only, so the
validation blocks (pre-training perplexity) hold text the tokenizer has not seen either. With `tokenizer:` a
checkpoint (a save_pretrained folder, a hub name or package:<python_package>/<subdir>) instead of `train`, that
checkpoint's tokenizer is used as it is, for continued pre-training from the same checkpoint (pretrain.init) and
checked there to be the same.

Run as a module: as a script, this file would shadow the standard library's `tokenize`.
"""

import copy
import hashlib
import json
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.common import atomic_dir, covered_by_deps, fail, load_params, meta, write_json

CORPUS = Path("data/2_clean/corpus")
TASK = Path("data/1_ingest/task")
OUT = Path("data/3_tokenize")
METRICS = Path("metrics/tokenize.json")

SPECIAL = ("eos", "pad", "mask")  # the roles of special_tokens, in the order of their ids (0, 1, 2)
BATCH = 1000  # documents read at a time from the memory-mapped corpus and its encoding


@dataclass(frozen=True)
class TokenizeParams:
    tokenizer: str  # train | a checkpoint's tokenizer: a save_pretrained folder, a hub name or package:<pkg>/<dir>
    special_tokens: dict[str, str]  # eos (document separator), pad, mask (masked LM) -> token string
    vocab_size: int  # larger = shorter sequences, bigger embedding tables (slower on a CPU)
    min_frequency: int  # a pair must occur this often to be merged
    block_size: int  # tokens per pre-training block; also the model's context length
    max_length: int  # task verses are truncated to this many tokens
    val_fraction: float  # share of corpus documents held out as validation blocks
    seed: int
    num_proc: int  # processes for datasets.map

    def validate(self):
        if sorted(self.special_tokens) != sorted(SPECIAL) or len(set(self.special_tokens.values())) != 3:
            yield f"special_tokens: expected three distinct tokens for {', '.join(SPECIAL)}, got {self.special_tokens}"
        if not self.tokenizer:
            yield "tokenizer: expected train or a checkpoint (folder or hub name)"
        if self.vocab_size < 256 + 3:
            yield f"vocab_size: must exceed the 256 byte tokens and 3 special tokens, got {self.vocab_size}"
        if self.block_size < 8 or self.max_length < 8:
            yield "block_size/max_length: must be >= 8"
        if not 0 < self.val_fraction < 1:
            yield f"val_fraction: must be in (0, 1), got {self.val_fraction}"


def train_tokenizer(texts, vocab_size: int, min_frequency: int, special: dict[str, str] | None = None):
    """A byte-level BPE (GPT-2 style: every string round-trips) as a transformers fast tokenizer.

    `texts` is any iterable of strings or of batches (lists) of strings, a generator included: only the word counts
    are held, not the texts. `special` maps eos, pad and mask to their strings (ids 0, 1, 2); GPT-2's <|endoftext|>,
    <pad>, <mask> if None.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = special or {"eos": "<|endoftext|>", "pad": "<pad>", "mask": "<mask>"}
    eos, pad, mask = (special[k] for k in SPECIAL)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos, pad, mask],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=None, pad_token=pad, mask_token=mask,
        model_max_length=1_000_000,
    )  # fmt: skip


def checkpoint_tokenizer(spec: str):
    """A checkpoint's own tokenizer (a folder, a hub name or package:<python_package>/<subdir>, as finetune takes),
    with a document separator and a pad token.

    GPT-2's has no pad token (it pads with its EOS, which attention masks hide); BERT's has no EOS and separates
    documents with [SEP].
    """
    from transformers import AutoTokenizer

    from stages.training import from_checkpoint

    tokenizer = from_checkpoint(AutoTokenizer.from_pretrained, spec, "tokenize.tokenizer", marker=None)
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.eos_token is None:
        fail(f"tokenize.tokenizer: the tokenizer of {spec} has no end-of-text or [SEP] token to separate documents")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_task(tokenizer, texts: list[str], max_length: int) -> dict[str, list]:
    """input_ids cut at max_length, and whether each text was actually cut (one that fits exactly was not).

    Encoding at max_length + 1 tells the two apart without encoding whole long texts:
    encode_task(tok, ["a b", "a b c"], 2) -> {"input_ids": [[a, b], [a, b]], "truncated": [False, True]}
    """
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length + 1)["input_ids"]
    return {"input_ids": [x[:max_length] for x in ids], "truncated": [len(x) > max_length for x in ids]}


def pack_stream(sequences: Iterable[Sequence[int]], block_size: int, eos_id: int) -> Iterator[list[int]]:
    """pack, one block at a time: only the tokens of the unfinished block are carried from a sequence to the next.

    list(pack_stream(iter([[1, 2], [3]]), 2, eos_id=0)) -> [[1, 2], [0, 3]]  (the trailing [0] is dropped)
    """
    carry: list[int] = []
    for seq in sequences:
        carry.extend(seq)
        carry.append(eos_id)
        full = len(carry) - len(carry) % block_size
        for i in range(0, full, block_size):
            yield carry[i : i + block_size]
        del carry[:full]


def pack(sequences: Iterable[Sequence[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Concatenate sequences with an EOS after each, cut into full blocks; the last partial block is dropped.

    pack([[1, 2], [3]], 2, eos_id=0) -> [[1, 2], [0, 3]]  (the trailing [0] is dropped)
    """
    return list(pack_stream(sequences, block_size, eos_id))


def batches(ds, column: str) -> Iterator[list]:
    """A column of a (memory-mapped) Dataset, BATCH rows at a time as Python lists, in the dataset's order."""
    for batch in ds.select_columns([column]).iter(BATCH):
        yield batch[column]


def column_total(ds, column: str, measure) -> int:
    """Sum over a column of an Arrow measure of each row, read in Arrow batches (no Python objects per row).

    column_total(docs, "text", pc.utf8_length) -> characters; column_total(ids, "input_ids", pc.list_value_length)
    -> tokens
    """
    import pyarrow.compute as pc

    arrow = ds.select_columns([column]).with_format("arrow")
    return sum(pc.sum(measure(b[column])).as_py() or 0 for b in arrow.iter(BATCH * 10))


def split_documents(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation documents (at least one of each)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def blocks_fingerprint(p: TokenizeParams, corpus_fingerprint: str, split: str) -> str:
    """The blocks' datasets fingerprint, from what determines them: two runs on one input write the same bytes."""
    key = json.dumps({"params": asdict(p), "corpus": corpus_fingerprint, "split": split}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def write_blocks(ids, idx: list[int], eos_id: int, p: TokenizeParams, fingerprint: str, cache: Path, split: str):
    """The blocks of documents idx (in that order) as a Dataset, packed and written to Arrow a batch at a time.

    `ids` is the memory-mapped encoded corpus; `cache` a fresh folder the blocks are written into (kept until saved).
    """
    from datasets import Dataset, Features, List, Value

    def rows():  # not gen_kwargs: from_generator would cut a list argument into one shard per item
        sequences = (x for batch in batches(ids.select(idx), "input_ids") for x in batch)
        for block in pack_stream(sequences, p.block_size, eos_id):
            yield {"input_ids": block}

    features = Features({"input_ids": List(Value("int32"))})  # what Dataset.from_dict makes of input_ids
    return Dataset.from_generator(rows, features=features, split=split, cache_dir=str(cache), fingerprint=fingerprint)


def encode_task_splits(tokenizer, task_ds, p: TokenizeParams, num_proc: int | None):
    """(the task's DatasetDict with input_ids, {split: texts cut at max_length}); it is small: encoded in memory.

    By a copy of the tokenizer: a fast tokenizer keeps the last call's truncation, which save_pretrained would write
    into tokenizer.json (then a raw `tokenizers.Tokenizer.from_file` would cut every text at max_length + 1).
    """
    tokenizer = copy.deepcopy(tokenizer)

    def encode_split(batch):
        return encode_task(tokenizer, batch["text"], p.max_length)

    task_ids = task_ds.map(encode_split, batched=True, num_proc=num_proc, keep_in_memory=True)
    truncated = {k: sum(v["truncated"]) for k, v in task_ids.items()}
    if sum(truncated.values()):  # counted in metrics too; a user's long texts lose their ends: say so now
        print(f"warning: {truncated} task texts are longer than tokenize.max_length ({p.max_length} tokens) and were "
              "truncated; raise it (up to the model's positions) to keep more of each", file=sys.stderr)  # fmt: skip
    return task_ids.remove_columns("truncated"), truncated


def run(
    p: TokenizeParams, corpus: Path = CORPUS, task: Path = TASK, out: Path = OUT, metrics_path: Path = METRICS
) -> dict:
    import pyarrow.compute as pc
    from datasets import DatasetDict, load_from_disk

    docs = load_from_disk(str(corpus))
    if len(docs) < 2:
        fail(f"{corpus}: {len(docs)} document(s); tokenize needs at least 2 (one for validation)")
    splits = dict(zip(("train", "validation"), split_documents(len(docs), p.val_fraction, p.seed), strict=True))
    if p.tokenizer == "train":  # on the train documents only, in batches: the validation ones stay unseen
        texts = batches(docs.select(splits["train"]), "text")
        tokenizer = train_tokenizer(texts, p.vocab_size, p.min_frequency, p.special_tokens)
    else:
        tokenizer = checkpoint_tokenizer(p.tokenizer)

    def encode(batch):
        return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

    num_proc = p.num_proc if p.num_proc > 1 else None
    with tempfile.TemporaryDirectory(prefix="tokenize-") as tmp_cache:
        # the encoding goes to a fresh temporary cache, memory-mapped: never into the input folder (another stage's
        # DVC output), and no earlier run's cache is reused
        cache = Path(tmp_cache)
        ids = docs.map(encode, batched=True, num_proc=num_proc, remove_columns=docs.column_names,
                       cache_file_name=str(cache / "ids.arrow"))  # fmt: skip
        tokens = {k: column_total(ids.select(idx), "input_ids", pc.list_value_length) for k, idx in splits.items()}
        counts = {k: (tokens[k] + len(idx)) // p.block_size for k, idx in splits.items()}  # + an EOS per document
        if not counts["validation"] or not counts["train"]:
            fail(f"{corpus}: too little text for one {p.block_size}-token block per split; lower tokenize.block_size")
        blocks = DatasetDict()
        for k, idx in splits.items():
            fp = blocks_fingerprint(p, docs._fingerprint, k)
            blocks[k] = write_blocks(ids, idx, tokenizer.eos_token_id, p, fp, cache / k, k)
        assert {k: len(v) for k, v in blocks.items()} == counts, "packing wrote another number of blocks than counted"
        task_ids, truncated = encode_task_splits(tokenizer, load_from_disk(str(task)), p, num_proc)
        metrics = {
            "vocab_size": len(tokenizer),
            "corpus_tokens": sum(tokens.values()),
            "blocks": counts,
            "block_size": p.block_size,
            "chars_per_token": round(column_total(docs, "text", pc.utf8_length) / max(1, sum(tokens.values())), 3),
            "task_truncated": truncated,  # verses longer than max_length (cut); one that fits exactly is not
        }
        with atomic_dir(out) as tmp:
            tokenizer.save_pretrained(tmp / "tokenizer")
            vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            sample = [
                f"{i}\t{tokenizer.convert_tokens_to_string([t])!r}" for t, i in vocab[:: max(1, len(vocab) // 200)]
            ]
            (tmp / "tokenizer" / "vocab_sample.txt").write_text("\n".join(sample) + "\n")
            blocks.save_to_disk(tmp / "blocks")
            task_ids.save_to_disk(tmp / "task")
            write_json(meta(p, **metrics), tmp / "meta.json")
    write_json(metrics, metrics_path)
    return metrics


def parse_args(argv: list[str] | None = None):
    """The params section and the paths: the defaults are the pipeline's `tokenize` stage; another stage of the same
    code (study/dvc.yaml's `tokenize_dapt`: the corpus in a checkpoint's tokenizer) names its own."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m stages.tokenize", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--params", default="tokenize", help="params.yaml section, also the stage's name (default: %(default)s)"
    )
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="the clean corpus (default: %(default)s)")
    ap.add_argument("--task", type=Path, default=TASK, help="the labeled task (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=OUT, help="the folder written (default: %(default)s)")
    ap.add_argument("--metrics", type=Path, default=METRICS, help="metrics JSON written (default: %(default)s)")
    ap.add_argument("--dvc-file", type=Path, default=Path("dvc.yaml"), help="holds the stage (default: %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from stages.common import ParamsError

    a = parse_args(argv)
    p = load_params(a.params, TokenizeParams)
    spec = p.tokenizer
    if spec != "train" and Path(spec).expanduser().exists() and not covered_by_deps(spec, a.params, a.dvc_file):
        fail(f"{a.params}.tokenizer: the local tokenizer {spec} is not a dependency of the {a.params} stage; add it "
             f"(or a folder above it) to its deps in {a.dvc_file}, so DVC reruns it when it changes")  # fmt: skip
    try:
        print(json.dumps(run(p, a.corpus, a.task, a.out, a.metrics), indent=2))
    except ParamsError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
