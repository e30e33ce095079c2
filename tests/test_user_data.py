"""A user's own data through the whole pipeline: product reviews (a CSV, 2 labels) and a corpus of one-line reviews
in text files, in a temp git + DVC repo at tiny sizes; only params.yaml's ingest: and `preset: short_text` change (no
filter or gate threshold). No parallel corpus: Apertium paraphrases the reviews all the same."""

import json
import random
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from tests.conftest import ROOT, make_project, run

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


CORPUS = 1200  # one-line reviews: enough for the gates' size bounds (100 documents, 100 blocks) as they are
ADJ = ["new", "cheap", "red", "small", "second-hand", "shiny", "heavy", "compact", "basic", "fancy"]
SHOP = ["the corner shop", "an online store", "the market", "a big chain", "the outlet", "a friend", "the airport",
        "a discount site", "the local mall", "an auction"]  # fmt: skip
WHEN = ["({n} days of use)", "(bought {n} weeks ago)", "(day {n})", "(used {n} times)", "(owned for {n} months)"]
WHO = ["my sister says", "my father thinks", "the neighbours agree", "my son swears", "everyone at work says",
       "my partner feels", "the kids think", "my mother insists", "our guests say", "a colleague reckons"]  # fmt: skip
FEEL = ["it was a bargain", "it is too loud", "it looks great", "the colour is odd", "it feels solid",
        "the cable is too short", "it saves us time", "the lid is loose", "it was overpriced",
        "it is worth keeping"]  # fmt: skip


def corpus_line(rng: random.Random) -> str:
    """One unlabeled one-sentence review of about 20 words, its parts drawn apart (shared phrases, not templates
    MinHash would take for near duplicates): what a shop's dump of short reviews looks like."""
    item, when = f"{rng.choice(ADJ)} {rng.choice(ITEMS)}", rng.choice(WHEN).format(n=rng.randint(2, 60))
    return (f"The {item} from {rng.choice(SHOP)} {rng.choice(GOOD + BAD)} {when}; {rng.choice(WHO)} "
            f"{rng.choice(FEEL)}.")  # fmt: skip


def write_own_data(project: Path) -> None:
    """data/own/reviews.csv (120 labeled reviews) and data/own/corpus/part-{1,2}.txt (1,200 reviews, one a line)."""
    own = project / "data/own"
    (own / "corpus").mkdir(parents=True, exist_ok=True)
    rows = reviews(120)
    lines = ["review,sentiment"] + [f'"{r["review"]}",{r["sentiment"]}' for r in rows]
    (own / "reviews.csv").write_text("\n".join(lines) + "\n")
    rng = random.Random(1)
    for part in (1, 2):
        (own / f"corpus/part-{part}.txt").write_text("\n".join(corpus_line(rng) for _ in range(CORPUS // 2)) + "\n")


OWN = {
    "ingest.source": "own",
    "ingest.corpus": {"files": "data/own/corpus/*.txt"},
    "ingest.task": {"files": "data/own/reviews.csv", "text_column": "review", "label_column": "sentiment"},
    "ingest.val_fraction": 0.2,  # 120 reviews: 12 per class held out for each of validation and test
    "ingest.test_fraction": 0.2,
    "preset": "short_text",  # one-line texts: the only change to clean's filters and the gates' bounds
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
    assert ingest["corpus_documents"] == CORPUS and ingest["task_splits_given"] == []
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


def test_the_short_text_preset_is_the_one_change_and_clean_keeps_most_of_the_one_line_reviews(own_project):
    params = yaml.safe_load((own_project / "params.yaml").read_text())
    bundled = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["preset"] == "short_text"
    assert params["clean"] == bundled["clean"] and params["gate"] == bundled["gate"]  # no threshold edited
    clean = read(own_project, "metrics/clean.json")
    assert clean["documents_in"] == CORPUS and clean["documents_out"] >= 0.9 * CORPUS, clean["drops"]
    meta = read(own_project, "data/2_clean/meta.json")["params"]
    assert meta["gopher_quality"]["min_doc_words"] == 1 and meta["fineweb"]["enabled"] is False  # short_text's


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
