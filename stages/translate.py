"""translate: two small Marian translators, English -> Spanish and Spanish -> English, trained from scratch, and
measured beside Apertium on the same held-out pairs.

Reads  data/1_ingest/parallel      DatasetDict train/validation: source (English), target (Spanish) verse pairs
Writes models/5_translate/en-es    MarianMTModel + tokenizer (save_pretrained) + meta.json
       models/5_translate/es-en    ... the reverse direction
       models/5_translate/samples.jsonl  a few validation verses with both translations and the round trip, ours
                                   and Apertium's
       metrics/translate.json      BLEU and chrF per direction, round-trip chrF (en -> es -> en), train seconds;
                                   `apertium`: the same for Apertium (eng-spa, spa-eng) and the round-trip chrF of
                                   every pivot of stages.apertium.PIVOTS, and the package versions
                                   (without a parallel corpus: {"skipped": reason}, and meta.json alone)
       reports/translate.md        the side-by-side table, generated from those metrics

    python -m stages.translate       (a stage of study/dvc.yaml: `dvc repro study/dvc.yaml:translate`)

Both directions share one byte-level BPE trained on both languages (an EOS post-processor ends every encoded
text with </s>, as Marian expects of encoder inputs and labels). Each direction is a MarianConfig model trained
by the loop below for `translate.max_steps` steps; checkpoints go to checkpoints/translate/<direction>, so a killed
run resumes where it stopped, and are deleted once the models are written. The defaults run in about 4.5 minutes
on an idle 2-core CPU (1400 steps per direction, ~13 it/s) to BLEU ~13 (en-es) and ~16 (es-en) on the held-out
chapters: rough. A round trip keeps a verse's topic and names, which is what back-translation feeds the classifier,
but seldom reads as English, and most sampled paraphrases loop (augment drops those). Quality is bought with steps:
max_steps 4200 reached BLEU 20.1 / 25.1 and round-trip chrF 48.6 (36.0 at 1400) in 688 s of training
(docs/back-translation.md).

Both systems are scored on every held-out pair (`eval_pairs: 0`) against the Reina-Valera 1909 (Spanish) and the
World English Bible; a round trip is scored against the English it started from. Apertium is not run when it is not
installed (the `apertium` section then says why).
"""

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stages import apertium
from stages.common import atomic_dir, fail, load_params, meta, seed_everything, write_json, write_text
from stages.training import (
    CHECKPOINTS,
    autocast,
    batch_indices,
    count_params,
    device,
    fingerprint,
    load_checkpoint,
    pad_batch,
    save_checkpoint,
    warmup_cosine,
)

PARALLEL = Path("data/1_ingest/parallel")
OUT = Path("models/5_translate")
METRICS = Path("metrics/translate.json")
REPORT = Path("reports/translate.md")
METRIC_MODULES = Path(__file__).resolve().parent.parent / "metric_modules"

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2; Marian starts decoding from the pad token
DIRECTIONS = {"en-es": ("source", "target"), "es-en": ("target", "source")}  # direction -> (input, output) column
MEGABATCH = 16  # batches drawn together and sorted by length, so a batch holds verses of similar length


@dataclass(frozen=True)
class TranslateParams:
    seed: int
    threads: int  # torch CPU threads; 0 = torch's default (one per core)
    vocab_size: int  # joint BPE vocabulary of both languages
    min_frequency: int
    max_length: int  # tokens per side, </s> included; longer verses are truncated
    d_model: int
    layers: int  # encoder layers, and as many decoder layers
    heads: int
    ffn_dim: int
    dropout: float
    init_std: float  # std of the initial weights; Marian's 0.02 keeps a small model's attention uniform for long
    max_steps: int  # optimizer steps per direction
    batch_size: int  # verse pairs per step
    lr: float
    warmup_steps: int
    weight_decay: float
    label_smoothing: float
    grad_clip: float
    checkpoint_every: int  # steps between checkpoints (0 = none: a killed run starts over)
    log_every: int
    eval_pairs: int  # validation pairs scored per direction (evenly spaced over the split); 0 = all
    num_beams: int  # 1 = greedy decoding
    no_repeat_ngram_size: int  # 0 = off; 3 stops an undertrained model's loops ("of the children of the children")
    batch_size_eval: int

    def validate(self):
        if self.vocab_size < 256 + 3:
            yield f"vocab_size: must exceed the 256 byte tokens and 3 special tokens, got {self.vocab_size}"
        if not 8 <= self.max_length <= 512:
            yield f"max_length: must be in [8, 512], got {self.max_length}"
        if self.d_model % self.heads:
            yield f"d_model: {self.d_model} is not divisible by heads {self.heads}"
        for name in ("layers", "heads", "max_steps", "batch_size", "log_every", "num_beams", "batch_size_eval"):
            if getattr(self, name) < 1:
                yield f"{name}: must be >= 1, got {getattr(self, name)}"
        if self.checkpoint_every < 0 or self.no_repeat_ngram_size < 0 or self.eval_pairs < 0:
            yield "checkpoint_every/no_repeat_ngram_size/eval_pairs: must be >= 0"
        if self.lr <= 0 or self.warmup_steps < 0:
            yield "lr/warmup_steps: need lr > 0 and warmup_steps >= 0"
        if self.threads < 0 or self.init_std <= 0:
            yield "threads/init_std: need threads >= 0 and init_std > 0"
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            yield "dropout/label_smoothing: must be in [0, 1)"


def train_tokenizer(texts, vocab_size: int, min_frequency: int, max_length: int):
    """A byte-level BPE over both languages whose encodings end with </s>, as a transformers fast tokenizer.

    tok("In the beginning")["input_ids"] -> [..., 1]  (1 is </s>)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # a first word is tokenized as later ones
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )  # fmt: skip


def build_model(p: TranslateParams, tokenizer):
    """A MarianMTModel from scratch: shared source/target embeddings tied to the output layer."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=p.d_model, encoder_layers=p.layers, decoder_layers=p.layers,
        encoder_attention_heads=p.heads, decoder_attention_heads=p.heads, encoder_ffn_dim=p.ffn_dim,
        decoder_ffn_dim=p.ffn_dim, dropout=p.dropout, init_std=p.init_std,
        max_position_embeddings=max(128, p.max_length),
        scale_embedding=True,  # embeddings (std init_std) * sqrt(d_model): not drowned by the sinusoidal positions
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )  # fmt: skip
    model = MarianMTModel(config)
    model.generation_config.max_new_tokens = p.max_length
    model.generation_config.num_beams = p.num_beams
    model.generation_config.no_repeat_ngram_size = p.no_repeat_ngram_size
    return model


def draw_batch(lengths: list[int], batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch `step`: a seeded megabatch of MEGABATCH batches (stages.training.batch_indices), sorted by
    length and cut in slices, taken in a seeded order. Any step can be recomputed, so a resumed run draws the same
    batches; similar lengths in a batch waste little compute on padding.
    """
    mega = batch_indices(len(lengths), batch_size * MEGABATCH, step // MEGABATCH, seed)
    mega.sort(key=lambda i: lengths[i])
    order = torch.randperm(MEGABATCH, generator=torch.Generator().manual_seed(seed * 7919 + step // MEGABATCH))
    k = order[step % MEGABATCH].item()
    return mega[k * batch_size : (k + 1) * batch_size] or mega[:batch_size]


def train(model, src: list[list[int]], tgt: list[list[int]], p: TranslateParams, ckpt: Path, fp: str, name: str):
    """Train `model` in place for p.max_steps steps on (src, tgt) token ids, resuming from `ckpt`; the last loss."""
    dev = device()
    model.to(dev).train()
    pad = model.config.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.98), weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, p.warmup_steps, p.max_steps))
    info = load_checkpoint(ckpt, model, optimizer, scheduler, fp)
    start, loss_avg = (info["step"], info["loss"]) if info else (0, None)
    lengths = [len(s) + len(t) for s, t in zip(src, tgt, strict=True)]
    t0 = time.time()
    for step in range(start, p.max_steps):
        idx = draw_batch(lengths, p.batch_size, step, p.seed)
        input_ids, attention_mask = pad_batch([src[i] for i in idx], pad)  # (B, S)
        labels, label_mask = pad_batch([tgt[i] for i in idx], pad)  # (B, T)
        decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], pad), labels[:, :-1]], dim=1)  # (B, T)
        labels = labels.masked_fill(label_mask == 0, -100)
        with autocast(dev):
            logits = model(
                input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev),
                decoder_input_ids=decoder_input_ids.to(dev), decoder_attention_mask=label_mask.to(dev),
            ).logits  # (B, T, V)  # fmt: skip
        loss = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            labels.to(dev).flatten(),
            ignore_index=-100,
            label_smoothing=p.label_smoothing,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if (step + 1) % p.log_every == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            lr = scheduler.get_last_lr()[0]
            print(f"{name} step {step + 1}/{p.max_steps} loss {loss_avg:.3f} lr {lr:.2e} {rate:.2f} it/s")
        if p.checkpoint_every and ((step + 1) % p.checkpoint_every == 0 or step + 1 == p.max_steps):
            save_checkpoint(ckpt, model, optimizer, scheduler, step + 1, fp, {"loss": loss_avg})
    return loss_avg


@torch.no_grad()
def translate(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[str]:
    """Translations of `texts`, in their order, decoded as the model's generation_config says; batches of similar
    length waste little on padding.
    """
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [""] * len(texts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        ids = model.generate(**enc.to(model.device), max_new_tokens=max_length)  # (B, T)
        for i, text in zip(idx, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    return out


def load_metric(name: str):
    """A repo-local `evaluate` module from metric_modules/ (no network)."""
    import evaluate

    return evaluate.load(str(METRIC_MODULES / name))


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, 0-100)."""
    bleu = load_metric("sacrebleu_bleu").compute(predictions=hypotheses, references=references)["bleu"]
    chrf = load_metric("chrf").compute(predictions=hypotheses, references=references)["chrf"]
    return {"bleu": round(bleu, 2), "chrf": round(chrf, 2)}


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread over range(n), all of them when k is 0: evenly_spaced(10, 3) -> [0, 3, 6]."""
    k = min(n, k or n)
    return sorted({i * n // k for i in range(k)})


def score_apertium(en: list[str], es: list[str]) -> tuple[dict, dict]:
    """(metrics, translations): Apertium's BLEU/chrF en->es and es->en against the pairs, and the round-trip chrF of
    every pivot in stages.apertium.PIVOTS against the English; ({"skipped": why}, {}) when a mode is not installed."""
    if why := apertium.missing(list(apertium.PIVOTS)):
        print(f"translate: Apertium not scored: {why}")
        return {"skipped": why}, {}
    try:
        hyp_es, hyp_en = apertium.translate(en, "eng-spa"), apertium.translate(es, "spa-eng")
        trips = {
            pivot: apertium.round_trip(en, pivot, hyp_es if pivot == "spa" else None)[1] for pivot in apertium.PIVOTS
        }
    except RuntimeError as e:
        fail(f"translate: {e}")
    metrics = {
        "en-es": score(hyp_es, es),
        "es-en": score(hyp_en, en),
        "round_trip_chrf": {pivot: score(trip, en)["chrf"] for pivot, trip in trips.items()},
        "versions": apertium.versions(list(apertium.PIVOTS)),
    }
    return metrics, {"en-es": hyp_es, "es-en": hyp_en, "en-es-en": trips["spa"]}


def report(m: dict) -> str:
    """reports/translate.md from metrics/translate.json's numbers: the two systems side by side, the round trips."""
    if "skipped" in m:
        return f"# Translators\n\nNot measured: {m['skipped']}.\n"
    a = m["apertium"]
    lines = [
        "# Translators: the pipeline's own vs Apertium",
        "",
        f"{m['eval_pairs']} held-out verse pairs (chapters the own translators never trained on): English (World "
        "English Bible) and Spanish (Reina-Valera 1909). BLEU and chrF (sacrebleu, 0-100) against the other side; "
        "a round trip English -> pivot -> English against the English it started from.",
        "",
        "BLEU against a 1909 translation rewards a model trained on that translation's wording (the pipeline's "
        "own translators learned from the Reina-Valera itself), so it does not decide between the two; the round "
        "trip, which is what back-translation feeds the classifier, needs no Spanish reference.",
        "",
    ]
    if "skipped" in a:
        return "\n".join([*lines, f"Apertium: not measured ({a['skipped']}).", ""])
    own = m["round_trip_chrf"]
    lines += [
        "| system | en->es BLEU | en->es chrF | es->en BLEU | es->en chrF | round-trip chrF (via Spanish) |",
        "|---|---|---|---|---|---|",
        f"| own (translate stage, {m['parameters']:,} parameters per direction) | {m['en-es']['bleu']} | "
        f"{m['en-es']['chrf']} | {m['es-en']['bleu']} | {m['es-en']['chrf']} | {own} |",
        f"| Apertium (eng-spa, spa-eng) | {a['en-es']['bleu']} | {a['en-es']['chrf']} | {a['es-en']['bleu']} | "
        f"{a['es-en']['chrf']} | {a['round_trip_chrf']['spa']} |",
        "",
        "| round trip | modes | chrF to the English |",
        "|---|---|---|",
        f"| own, via Spanish | en-es, es-en | {own} |",
        *(f"| Apertium, via {pivot} | {apertium.PIVOTS[pivot][0]}, {apertium.PIVOTS[pivot][1]} | {chrf} |"
          for pivot, chrf in a["round_trip_chrf"].items()),
        "",
        "Apertium packages: " + ", ".join(f"{k} {v}" for k, v in a["versions"].items()) + ".",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def run(
    p: TranslateParams, parallel: Path = PARALLEL, out: Path = OUT, metrics_path: Path = METRICS,
    checkpoints: Path = CHECKPOINTS / "translate", report_path: Path = REPORT,
) -> dict:  # fmt: skip
    from datasets import load_from_disk

    if p.threads:
        torch.set_num_threads(p.threads)
    data = load_from_disk(str(parallel))
    if len(data["train"]) == 0:  # a user's data without a parallel corpus: nothing to train, and said so
        reason = f"no parallel corpus ({parallel} has no pairs: ingest.parallel is null)"
        return skip(reason, p, out, metrics_path, report_path)
    train_pairs = data["train"].filter(lambda r: r["source"].strip() and r["target"].strip(), keep_in_memory=True)
    if len(train_pairs) < p.batch_size or len(data["validation"]) == 0:
        fail(f"{parallel}: {len(train_pairs)} train / {len(data['validation'])} validation pairs; too few to train")
    seed_everything(p.seed)
    texts = {col: list(train_pairs[col]) for col in ("source", "target")}
    tokenizer = train_tokenizer(texts["source"] + texts["target"], p.vocab_size, p.min_frequency, p.max_length)
    ids = {col: tokenizer(t, truncation=True, max_length=p.max_length)["input_ids"] for col, t in texts.items()}
    models, losses, t0 = {}, {}, time.time()
    for name, (src_col, tgt_col) in DIRECTIONS.items():
        seed_everything(p.seed)
        models[name] = build_model(p, tokenizer)
        fp = fingerprint({**asdict(p), "direction": name}, parallel)
        losses[name] = train(models[name], ids[src_col], ids[tgt_col], p, checkpoints / name, fp, name)
    train_seconds = time.time() - t0

    val = data["validation"].select(evenly_spaced(len(data["validation"]), p.eval_pairs))
    en, es = list(val["source"]), list(val["target"])
    gen = {"max_length": p.max_length, "batch_size": p.batch_size_eval}  # decoding: the models' generation_config
    hyp_es = translate(models["en-es"], tokenizer, en, **gen)
    hyp_en = translate(models["es-en"], tokenizer, es, **gen)
    round_trip = translate(models["es-en"], tokenizer, hyp_es, **gen)
    theirs, theirs_text = score_apertium(en, es)
    trainable, _ = count_params(models["en-es"])
    metrics = {
        "en-es": {**score(hyp_es, es), "train_loss": round(losses["en-es"], 4)},
        "es-en": {**score(hyp_en, en), "train_loss": round(losses["es-en"], 4)},
        "round_trip_chrf": score(round_trip, en)["chrf"],
        "eval_pairs": len(val),
        "parameters": trainable,
        "apertium": theirs,
        "train_seconds": round(train_seconds, 1),
    }
    counts = {"train_pairs": len(train_pairs), **metrics}
    with atomic_dir(out) as tmp:
        for name, model in models.items():
            model.save_pretrained(tmp / name)
            tokenizer.save_pretrained(tmp / name)
            write_json(meta(p, direction=name, **counts), tmp / name / "meta.json")
        with open(tmp / "samples.jsonl", "w") as f:
            for i in range(min(10, len(val))):
                row = {"en": en[i], "es": es[i], "en-es": hyp_es[i], "es-en": hyp_en[i], "en-es-en": round_trip[i],
                       **{f"apertium {k}": v[i] for k, v in theirs_text.items()}}  # fmt: skip
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)
    write_json(metrics, metrics_path)
    write_text(report(metrics), report_path)
    return metrics


def skip(reason: str, p: TranslateParams, out: Path, metrics_path: Path, report_path: Path) -> dict:
    """No translators: models/5_translate holds only meta.json with the reason, and the metrics say it too.
    augment reads the reason there and skips back-translation with the same notice."""
    metrics = {"skipped": reason}
    with atomic_dir(out) as tmp:
        write_json(meta(p, **metrics), tmp / "meta.json")
    write_json(metrics, metrics_path)
    write_text(report(metrics), report_path)
    print(f"translate skipped: {reason}")
    return metrics


def main() -> None:
    print(json.dumps(run(load_params("translate", TranslateParams)), indent=2))


if __name__ == "__main__":
    main()
