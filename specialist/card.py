"""Model cards (README.md in the Hugging Face format) generated from what the pipeline recorded, never typed.

    card({"run": "full", "method": "full", "labels": [...], "test": {...}, ...}) -> "---\\nlanguage: en ... # ..."

The YAML header is huggingface_hub's ModelCardData (model-index from the test scores when there are any); the body
says what the model is, what it was trained on, how well it does with its intervals, where it came from (git
revision, dvc.lock hashes of its inputs) and how to use it. `facts` keys are listed in card(); a missing optional
one leaves its section out (the finetune stage knows no test scores; the release stage does). check() is the offline
metadata check the release folder passes.
"""

import json

TASK = "Verse -> genre of its book"
DATASET = "specialist-pipeline/bible-verse-genre"  # built by this pipeline from data/raw; not on the Hub
DATA_LICENSE = "public domain (World English Bible, King James Version, Reina-Valera 1909: data/raw/SOURCES.md)"
REQUIRED = ("language", "license", "pipeline_tag", "datasets", "metrics", "tags")


def metadata(facts: dict):
    """The card's YAML header as huggingface_hub.ModelCardData."""
    from huggingface_hub import EvalResult, ModelCardData

    base = facts.get("base", {})
    results = []
    if test := facts.get("test"):
        for metric, name in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1")):
            results.append(EvalResult(task_type="text-classification", task_name=TASK, dataset_type=DATASET,
                                      dataset_name="the pipeline's labeled task (held-out test split)",
                                      dataset_split=test["split"], metric_type="accuracy" if metric == "accuracy"
                                      else "f1", metric_name=name, metric_value=test[metric],
                                      metric_config=None if metric == "accuracy" else "macro"))  # fmt: skip
    license_ = base.get("license") or "other"
    return ModelCardData(
        language="en", license=license_, license_name=None if base.get("license") else "public-domain-data",
        library_name="peft" if facts["format"] == "peft" else "transformers", pipeline_tag="text-classification",
        base_model=base.get("hub_id"), datasets=[DATASET], metrics=["accuracy", "f1"],
        tags=["text-classification", "specialist-pipeline", facts["method"], *(["peft"] if facts["format"] == "peft"
                                                                                 else [])],
        model_name=f"specialist-{facts['run']}" if results else None, eval_results=results or None,
    )  # fmt: skip


def interval(value: float, ci: list[float] | None) -> str:
    """0.3721, [0.3302, 0.4133] -> '0.372 (95% CI 0.330-0.413)'."""
    return f"{value:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def usage(facts: dict) -> list[str]:
    """How to load the folder (transformers or PEFT) and the predict command."""
    path = facts.get("model_path", "models/release")
    if facts["format"] == "peft":
        load = ["from peft import AutoPeftModelForSequenceClassification  # run from the repo root (base/ path)",
                f'model = AutoPeftModelForSequenceClassification.from_pretrained("{path}")']  # fmt: skip
    else:
        load = ["from transformers import AutoModelForSequenceClassification",
                f'model = AutoModelForSequenceClassification.from_pretrained("{path}")']  # fmt: skip
    if facts.get("method") == "qlora":  # its base/ holds 4-bit weights
        load.append("# base/'s matrices are 4-bit NF4: needs bitsandbytes (pip install bitsandbytes==0.50.2)")
    hub = [
        "",
        "Downloaded from the Hub (the recorded base path is the repo's): `PeftModel.from_pretrained("
        'AutoModelForSequenceClassification.from_pretrained(repo_id, subfolder="base"), repo_id)`.',
    ]
    return [
        "```python", "import specialist.classifier  # registers model_type specialist (no trust_remote_code)", *load,
        "```", *(hub if facts["format"] == "peft" else []), "",
        "From any directory, `specialist.classifier.load(folder)` returns (model, tokenizer); "
        "`specialist.predict.predict(texts, folder)` returns labels and probabilities. From the command line:", "",
        "```bash", f"python -m stages.predict verses.txt --model {path} --out predictions.jsonl", "```",
    ]  # fmt: skip


def card(facts: dict) -> str:
    """The README.md. facts: run, method, init, format (standard | peft), labels, pooling, lr, knobs, augmented,
    trainable_params, total_params, data {task: {split: n}, train_examples, chapters?, corpus?},
    validation {accuracy, best_epoch}, base {name, hub_id?, license?}; optional: test {split, examples, accuracy,
    accuracy_ci95, macro_f1, macro_f1_ci95, interval}, provenance {git, dvc_lock: {path: md5}}, model_path."""
    data, val, base = facts["data"], facts["validation"], facts["base"]
    knobs = json.dumps(facts.get("knobs")) if facts.get("knobs") else "none"
    share = facts["trainable_params"] / facts["total_params"]
    lines = [
        f"# specialist-{facts['run']}: a {len(facts['labels'])}-class text classifier", "",
        f"Classifies a text into one of: {', '.join(facts['labels'])} (the bundled task: the genre of a Bible "
        f"verse's book). Fine-tuning run `{facts['run']}` of this repository's pipeline.", "",
        "## Model", "",
        f"- Body: {base['name']} (init `{facts['init']}`); head: linear over the `{facts['pooling']}` pooling of the "
        "text's hidden states (specialist.classifier)",
        f"- Method: `{facts['method']}` ({knobs}); learning rate {facts['lr']:g}; trainable parameters "
        f"{facts['trainable_params']:,} of {facts['total_params']:,} ({share:.2%})",
        f"- Format: {'PEFT SEQ_CLS adapter, head in modules_to_save, base model in base/' if facts['format'] == 'peft' else 'transformers save_pretrained (model_type specialist)'}",  # noqa: E501
        "", "## Training data", "",
        f"- Labeled examples: {data['task']['train']:,} train ({data['train_examples']:,} training examples"
        f"{' with the back-translated paraphrases' if facts.get('augmented') else ''}), "
        f"{data['task']['validation']:,} validation, {data['task']['test']:,} test",
    ]  # fmt: skip
    if chapters := data.get("chapters"):
        lines.append(f"- Splits by chapter (no chapter in two splits): {chapters['train']:,} train, "
                     f"{chapters['validation']:,} validation, {chapters['test']:,} test chapters")  # fmt: skip
    if corpus := data.get("corpus"):
        lines.append(f"- Pre-training corpus: {corpus['documents']:,} English chapters (training chapters only), "
                     f"{corpus['tokens']:,} tokens")  # fmt: skip
    epoch = val["best_epoch"]
    lines += [f"- License of the data: {DATA_LICENSE}", "", "## Evaluation", "",
              f"- Validation accuracy (early stopping's choice, epoch {epoch}): {val['accuracy']:.3f}"]  # fmt: skip
    if test := facts.get("test"):
        lines += [f"- Test ({test['examples']:,} verses of chapters no stage trained on): accuracy "
                  f"{interval(test['accuracy'], test['accuracy_ci95'])}, macro-F1 "
                  f"{interval(test['macro_f1'], test['macro_f1_ci95'])}",
                  f"- Intervals: {test['interval']}"]  # fmt: skip
        if b := facts.get("baseline"):
            lines.append(f"- The bar: {b['name']}, the baseline with the best validation accuracy (scikit-learn on "
                         f"the same labels), reaches test accuracy {b['accuracy']:.3f}")  # fmt: skip
    else:
        lines.append("- Test scores: written by the release stage (models/release/README.md) and reports/evaluate.md")
    if prov := facts.get("provenance"):
        lines += ["", "## Provenance", "", f"- Git revision: {prov['git']}", "- dvc.lock hashes of its inputs:", "",
                  *(f"  - `{path}`: {md5}" for path, md5 in prov["dvc_lock"].items())]  # fmt: skip
    lines += ["", "## Use", "", *usage(facts), "", "## Intended use and limits", "",
              "- For research and teaching: a small model trained from few labels (bundled: 32 per class), "
              "to compare fine-tuning methods; not for decisions about people or texts that matter.",
              "- It knows the kind of text it was trained on (bundled: verse-length English in Bible style); other "
              "text gets a label all the same, often a wrong one. Texts longer than the tokenizer's model_max_length "
              "are truncated (predict flags them).",
              "- Classes overlap (bundled: prophets and apocalyptic, history and law): read the probabilities, not "
              "only the label.", ""]  # fmt: skip
    return f"---\n{metadata(facts).to_yaml()}\n---\n\n" + "\n".join(lines)


def check(text: str) -> list[str]:
    """Offline stand-in for huggingface_hub's ModelCard.validate() (which asks the Hub): the card parses with
    ModelCard, its metadata has every REQUIRED key, pipeline_tag is text-classification, and each model-index
    result has a task, a dataset and a metric value. Returns the problems ([] when it passes)."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text).data.to_dict()
    except Exception as e:  # noqa: BLE001 - any parse failure is the problem to report
        return [f"does not parse as a model card: {type(e).__name__}: {e}"]
    problems = [f"metadata lacks {key}" for key in REQUIRED if not data.get(key)]
    if data.get("pipeline_tag") != "text-classification":
        problems.append(f"pipeline_tag is {data.get('pipeline_tag')!r}, not text-classification")
    for entry in data.get("model-index", []):
        for result in entry.get("results", []):
            if not (result.get("task", {}).get("type") and result.get("dataset", {}).get("type")):
                problems.append("a model-index result lacks its task or dataset type")
            if any("value" not in m for m in result.get("metrics", [])):
                problems.append("a model-index metric lacks its value")
    return problems
