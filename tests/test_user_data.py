"""A user's own data through the whole pipeline: product reviews (a CSV, 2 labels) and a corpus of review text files,
in a temp git + DVC repo at tiny sizes; only params.yaml changes. No parallel corpus: Apertium paraphrases the
reviews all the same."""

import json
import random
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from tests.conftest import make_project, run

pytestmark = pytest.mark.slow

ITEMS = ["kettle", "blender", "desk lamp", "backpack", "toaster", "office chair", "umbrella", "phone case",
         "coffee grinder", "rice cooker", "water bottle", "pair of headphones"]  # fmt: skip
GOOD = ["works perfectly", "is sturdy and well made", "exceeded my expectations", "was worth every penny",
        "arrived early and works great", "is a joy to use every day"]  # fmt: skip
BAD = ["broke after two days", "stopped working within a week", "is flimsy and cheap", "was a waste of money",
       "arrived damaged and missing parts", "is loud and hard to clean"]  # fmt: skip
OPENERS = ["Honestly, the", "My new", "This", "The", "I think the", "Overall the"]
CLOSERS = {"positive": ["Highly recommended.", "Five stars.", "I would buy it again.", "Love it."],
           "negative": ["Do not buy.", "One star.", "I returned it.", "Very disappointed."]}  # fmt: skip


def reviews(n: int, seed: int = 0) -> list[dict]:
    """n short labeled reviews, alternating positive and negative, every one different."""
    rng, out = random.Random(seed), []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        phrase = rng.choice(GOOD if label == "positive" else BAD)
        text = f"{rng.choice(OPENERS)} {rng.choice(ITEMS)} {phrase}. {rng.choice(CLOSERS[label])} (order {1000 + i})"
        out.append({"review": text, "sentiment": label})
    return out


def corpus_line(rng: random.Random) -> str:
    """One unlabeled review of 40-60 words, English prose: what a shop's review dump looks like."""
    item = rng.choice(ITEMS)
    sentences = [
        f"I bought the {item} for my {rng.choice(['sister', 'office', 'kitchen', 'father', 'flat'])} a while ago",
        f"and it {rng.choice(GOOD + BAD)}.",
        f"The box it came in was {rng.choice(['small', 'huge', 'torn', 'neat'])} and the manual was "
        f"{rng.choice(['clear', 'useless', 'short', 'in three languages'])}.",
        f"After {rng.randint(2, 40)} days of use I can say that it is {rng.choice(['fine', 'not bad', 'great'])}",
        f"for the price, but the {rng.choice(['colour', 'handle', 'lid', 'cable', 'strap'])} could be better.",
        f"I would {rng.choice(['maybe', 'not', 'happily', 'probably'])} buy another one for my "
        f"{rng.choice(['mother', 'friend', 'neighbour', 'son'])}.",
    ]
    return " ".join(sentences)


def write_own_data(project: Path) -> None:
    """data/own/reviews.csv (120 labeled reviews) and data/own/corpus/part-{1,2}.txt (200 reviews, one a line)."""
    own = project / "data/own"
    (own / "corpus").mkdir(parents=True, exist_ok=True)
    rows = reviews(120)
    lines = ["review,sentiment"] + [f'"{r["review"]}",{r["sentiment"]}' for r in rows]
    (own / "reviews.csv").write_text("\n".join(lines) + "\n")
    rng = random.Random(1)
    for part in (1, 2):
        (own / f"corpus/part-{part}.txt").write_text("\n".join(corpus_line(rng) for _ in range(100)) + "\n")


OWN = {
    "ingest.source": "own",
    "ingest.corpus": {"files": "data/own/corpus/*.txt"},
    "ingest.task": {"files": "data/own/reviews.csv", "text_column": "review", "label_column": "sentiment"},
    "ingest.val_fraction": 0.2,  # 120 reviews: 12 per class held out for each of validation and test
    "ingest.test_fraction": 0.2,
    # the gates' bounds are sized for the Bibles; a user sets them for their data, here for 200 short reviews
    "gate.ingest.min_corpus_documents": 50,
    "gate.ingest.min_document_chars": 50,
    "gate.clean.min_documents": 50,
    "gate.tokenize.min_train_blocks": 10,
    "gate.tokenize.max_block_token_drift": 0.03,  # packing adds an EOS per document: +1.4% for 70-token reviews
}


@pytest.fixture(scope="module")
def own_project(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("own"), OWN)
    write_own_data(project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "own data"], project)
    run(["dvc", "repro"], project)
    return project


def read(project: Path, path: str) -> dict:
    return json.loads((project / path).read_text())


def test_every_stage_runs_on_the_reviews_with_their_two_inferred_labels(own_project):
    lock = yaml.safe_load((own_project / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((own_project / "params.yaml").read_text())
    runs, baselines = list(params["finetune"]["runs"]), list(params["baseline"]["runs"])
    assert {"ingest", "clean", "tokenize", "pretrain", "augment", "evaluate"} <= set(lock)
    assert {f"finetune@{r}" for r in runs} | {f"baseline@{r}" for r in baselines} <= set(lock)
    for gate in ("ingest", "clean", "tokenize", "augment", "predictions"):
        assert read(own_project, f"reports/gates/{gate}.json")["success"] is True, gate

    assert read(own_project, "data/1_ingest/meta.json")["labels"] == ["negative", "positive"]
    ingest = read(own_project, "metrics/ingest.json")
    assert ingest["task_train_per_class"] == {"negative": 8, "positive": 8}
    assert ingest["task"]["validation"] == ingest["task"]["test"] == 20  # eval_per_class 10 x 2 classes
    assert ingest["corpus_documents"] == 200 and ingest["task_splits_given"] == []
    task = load_from_disk(str(own_project / "data/1_ingest/task"))
    assert task["train"].features["label"].names == ["negative", "positive"]
    held_out = set(task["validation"]["text"]) | set(task["test"]["text"])
    assert held_out and held_out.isdisjoint(task["pool"]["text"])

    metrics = read(own_project, "metrics/evaluate.json")
    assert set(metrics["runs"]) == set(runs) | set(baselines) and metrics["examples"] == 20
    for name, r in metrics["runs"].items():
        assert 0 <= r["accuracy"] <= 1 and set(r["per_class_f1"]) == {"negative", "positive"}, name
    report = (own_project / "reports/evaluate.md").read_text()
    assert "Text -> label (2 classes: negative, positive), 20 held-out test examples." in report
    tokenized = load_from_disk(str(own_project / "data/3_tokenize/task"))
    for name in runs:
        lines = (own_project / f"models/7_finetune/{name}/predictions.jsonl").read_text().splitlines()
        assert len(lines) == len(tokenized["validation"]) + len(tokenized["test"]), name


def test_without_a_parallel_corpus_apertium_still_paraphrases_the_reviews(own_project):
    assert "no parallel corpus" in read(own_project, "metrics/ingest.json")["parallel_skipped"]
    augment = read(own_project, "metrics/augment.json")
    assert "skipped" not in augment and augment["kept"] > augment["sources"] == 16  # 8 reviews per class
    paraphrases = load_from_disk(str(own_project / "data/6_augment"))
    assert len(paraphrases) == augment["kept"] and paraphrases.features["label"].names == ["negative", "positive"]
    report = (own_project / "reports/evaluate.md").read_text()
    assert "full_bt trained on no paraphrases" not in report


def test_a_changed_file_under_data_own_makes_ingest_stale(own_project):
    before_status = run(["dvc", "status", "ingest"], own_project).stdout
    assert "Data and pipelines are up to date" in before_status, before_status
    csv = own_project / "data/own/reviews.csv"
    before = csv.read_text()
    try:
        csv.write_text(before + '"A brand new review of the kettle, it works perfectly.",positive\n')
        status = run(["dvc", "status", "ingest"], own_project).stdout
        assert "ingest:" in status and "modified:" in status and "data/own" in status, status
    finally:
        csv.write_text(before)


def save_checkpoint(folder: Path, texts: list[str]) -> None:
    """A 2-layer GPT-2 (32 dims, unlike the tiny config's 64) and a BPE trained on the reviews: "a hub checkpoint"."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from stages.tokenize import train_tokenizer

    tok = train_tokenizer(texts, vocab_size=300, min_frequency=2)
    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos,
                        eos_token_id=eos)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def own_checkpoint_project(tmp_path_factory) -> Path:
    """The same data, and a local checkpoint as pretrain.init (continued pre-training) whose tokenizer tokenize reuses;
    the folder is a dep of both stages, as main() requires of a local checkpoint."""
    base = "data/own/base"
    project = make_project(
        tmp_path_factory.mktemp("own_init"), {**OWN, "pretrain.init": base, "tokenize.tokenizer": base}
    )
    write_own_data(project)
    save_checkpoint(project / base, (project / "data/own/corpus/part-1.txt").read_text().splitlines())
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    for stage in ("tokenize", "pretrain"):
        dvc["stages"][stage]["deps"].append(base)
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "own data, own checkpoint"], project)
    run(["dvc", "repro"], project)
    return project


def test_a_local_checkpoint_as_init_is_continued_and_fine_tuned_on_the_reviews(own_checkpoint_project):
    from transformers import AutoConfig, AutoTokenizer

    project, base = own_checkpoint_project, own_checkpoint_project / "data/own/base"
    ours = AutoTokenizer.from_pretrained(project / "data/3_tokenize/tokenizer")
    assert ours.get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()  # reused, not trained anew
    config = AutoConfig.from_pretrained(project / "models/4_pretrain")
    assert (config.n_embd, config.n_layer) == (32, 2)  # the checkpoint's architecture, not pretrain.n_embd/n_layer
    from safetensors.torch import load_file

    start, end = load_file(base / "model.safetensors"), load_file(project / "models/4_pretrain/model.safetensors")
    wte = "transformer.wte.weight"
    assert start[wte].shape == end[wte].shape and not start[wte].equal(end[wte])  # its weights, trained further
    assert read(project, "metrics/pretrain.json")["val_perplexity"] > 0
    for gate in ("ingest", "clean", "tokenize", "augment", "predictions"):
        assert read(project, f"reports/gates/{gate}.json")["success"] is True, gate
    metrics = read(project, "metrics/evaluate.json")
    runs = yaml.safe_load((project / "params.yaml").read_text())["finetune"]["runs"]
    assert set(runs) <= set(metrics["runs"])
    for name in runs:
        r = metrics["runs"][name]
        assert 0 <= r["accuracy"] <= 1 and set(r["per_class_f1"]) == {"negative", "positive"}, name
        assert r["trainable_params"] > 0, name
