"""bench.pretrain_recipe: which pre-training recipe pays off downstream? Each cell of a grid pre-trains with
params.yaml's pretrain section changed by a few keys, then fine-tunes `full` on the task and reports validation
numbers only (the test split is never scored here).

    python -m bench.pretrain_recipe                      # every cell not yet in the report; writes both files below
    python -m bench.pretrain_recipe --cells muon_3e-3    # some cells (two such processes may run side by side)
    python -m bench.pretrain_recipe --report             # rewrite the markdown table from the JSON only

Writes reports/bench/pretrain_recipe.json (one entry per cell, written as each finishes: a killed grid resumes at
the next cell, and a cell's pre-training resumes from its checkpoint) and reports/bench/pretrain_recipe.md.

A cell is `pretrain` (keys over params.yaml's pretrain section), `corpus` (all: data/3_tokenize; web: the WEB
chapters of data/2_clean alone, re-tokenized with a BPE of their own) and `finetune`: fine-tuning runs of its body,
each {pooling, lr_scale, seed} over finetune.train and finetune.runs.full (init scratch: the same architecture,
random init, at lr 1e-3, scratch's rate). Per cell: validation perplexity on every validation block of its corpus,
training seconds (wall) and CPU seconds, and per fine-tuning run its best validation accuracy (early stopping
reads validation too, as in the pipeline). Seconds depend on the machine's load: compare CPU seconds, and
wall-clock only within bench.pretrain_quality's single run. `--threads` (default 1) keeps cells comparable at
equal compute and lets two run at once.
"""

import argparse
import dataclasses
import fcntl
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from stages.common import load_params, write_json, write_text

REPORT = Path("reports/bench/pretrain_recipe.json")
WORK = Path("checkpoints/pretrain_recipe")
SCRATCH_LR = 1e-3  # finetune.runs.scratch's rate (lr_scale 1.0 x the pretrain.lr it was tuned with)

FT_BASE = [{"pooling": "mean", "lr_scale": 0.1, "seed": 0}]
TODAY = {"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 30, "max_steps": 250,
         "batch_size": 32, "min_lr_ratio": 0.1}  # fmt: skip
# name -> cell; "note" says what the cell varies against which other
GRID = {
    "adamw_1e-3_cos": {
        "pretrain": TODAY,
        "finetune": FT_BASE + [{"init": "scratch", "pooling": "mean", "seed": 0}],
        "note": "today's recipe (1M tokens); scratch: its architecture, random init",
    },
    "adamw_3e-3_cos": {"pretrain": {**TODAY, "lr": 3e-3}, "finetune": FT_BASE, "note": "lr"},
    "muon_6e-3_cos": {"pretrain": {**TODAY, "optimizer": "muon", "lr": 6e-3}, "finetune": FT_BASE, "note": "lr"},
    "muon_3e-3_cos": {
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3},
        "finetune": FT_BASE
        + [
            {"pooling": "mean", "lr_scale": 1 / 30, "seed": 0},  # 1e-4, as today's full
            {"pooling": "mean_last", "lr_scale": 0.1, "seed": 0},
            {"pooling": "mean_last", "lr_scale": 1 / 30, "seed": 0},
            {"init": "scratch", "pooling": "mean_last", "seed": 0},
        ],
        "note": "optimizer; fine-tuning: lr (x0.1 = 3e-4 vs 1e-4), pooling",
    },
    "muon_3e-3_cos_s1": {  # the same pre-training (its outputs copied from muon_3e-3_cos), fine-tuning seed 1
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3},
        "finetune": [
            {"pooling": "mean", "lr_scale": 0.1, "seed": 1},
            {"init": "scratch", "pooling": "mean", "seed": 1},
            {"pooling": "mean_last", "lr_scale": 1 / 30, "seed": 1},
            {"pooling": "mean", "lr_scale": 1 / 30, "seed": 1},
        ],
        "note": "fine-tuning seed 1 of muon_3e-3_cos's body, and scratch's",
    },
    "muon_3e-3_cos_web": {
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3},
        "corpus": "web",
        "finetune": FT_BASE,
        "note": "corpus: the WEB chapters alone (the task's translation; KJV is archaic), 1.3 epochs",
    },
    "muon_3e-3_wsd": {
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3, "schedule": "wsd", "decay_fraction": 0.2},
        "finetune": FT_BASE,
        "note": "schedule",
    },
    "muon_3e-3_cos_b16": {
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3, "batch_size": 16, "max_steps": 500},
        "finetune": FT_BASE,
        "note": "batch size, at equal tokens",
    },
    "recipe": {
        "pretrain": {**TODAY, "optimizer": "muon", "lr": 3e-3, "max_steps": 550},
        "finetune": [{"pooling": "mean_last", "lr_scale": 1 / 30, "seed": s} for s in (0, 1)]
        + [{"init": "scratch", "pooling": "mean_last", "seed": s} for s in (0, 1)],
        "note": "params.yaml's recipe (2.25M tokens) and fine-tuning",
    },
}


def cell_params(spec: dict):
    from stages.pretrain import PretrainParams

    p = load_params("pretrain", PretrainParams)
    return dataclasses.replace(p, **{**spec, "checkpoint_every": 50, "init": "scratch", "objective": "causal"})


def corpus_dir(corpus: str) -> Path:
    """The tokenize output a cell trains on: the pipeline's (data/3_tokenize), or the WEB chapters alone."""
    if corpus == "all":
        return Path("data/3_tokenize")
    out = WORK / f"data_{corpus}"
    if not (out / "meta.json").exists():
        from datasets import load_from_disk

        from stages.tokenize import TokenizeParams
        from stages.tokenize import run as tokenize

        docs = load_from_disk("data/2_clean/corpus").filter(lambda r: r["id"].startswith(f"{corpus}/"))
        docs.save_to_disk(str(WORK / f"clean_{corpus}"))
        tokenize(load_params("tokenize", TokenizeParams), corpus=WORK / f"clean_{corpus}",
                 task=Path("data/1_ingest/task"), out=out, metrics_path=WORK / f"tokenize_{corpus}.json")  # fmt: skip
    return out


def pretrain_cell(name: str, cell: dict) -> dict:
    from stages.pretrain import run

    p, data, work = cell_params(cell["pretrain"]), corpus_dir(cell.get("corpus", "all")), WORK / name
    if (work / "metrics.json").exists() and (work / "model/meta.json").exists():
        return json.loads((work / "metrics.json").read_text()) | json.loads((work / "cpu.json").read_text())
    cpu0 = cpu_seconds()
    metrics = run(p, blocks=data / "blocks", tokenizer_dir=data / "tokenizer", out=work / "model",
                  metrics_path=work / "metrics.json", live_dir=work / "live", ckpt=work / "ckpt")  # fmt: skip
    cpu = {"cpu_seconds": round(cpu_seconds() - cpu0, 1)}  # a resumed cell: the last process's share only
    write_json(cpu, work / "cpu.json")
    return metrics | cpu


def finetune_cell(name: str, cell: dict, ft: dict) -> dict:
    """One fine-tuning run of the cell's body (or of a random one of its architecture): best validation accuracy."""
    from stages.finetune import RunParams, TrainParams, run

    t = dataclasses.replace(load_params("finetune.train", TrainParams), pooling=ft["pooling"], seed=ft["seed"])
    p, data = cell_params(cell["pretrain"]), corpus_dir(cell.get("corpus", "all"))
    scratch = ft.get("init") == "scratch"
    r = dataclasses.replace(load_params("finetune.runs.full", RunParams), init="scratch" if scratch else "pretrained",
                            lr_scale=SCRATCH_LR / p.lr if scratch else ft["lr_scale"])  # fmt: skip
    key = ft_key(ft)
    cpu0 = cpu_seconds()
    out = run(key, t, r, task_dir=data / "task", tokenizer_dir=data / "tokenizer", pretrained=WORK / name / "model",
              augment_dir=WORK / "none", out=WORK / name / "ft", metrics_dir=WORK / name / "ft_metrics",
              checkpoints=WORK / name / "ft_ckpt")  # fmt: skip
    shutil.rmtree(WORK / name / "ft" / key, ignore_errors=True)  # its test predictions stay unread
    return {"run": key, **ft, "lr": out["lr"], "best_val_accuracy": out["best_val_accuracy"],
            "best_epoch": out["best_epoch"], "train_seconds": out["train_seconds"],
            "cpu_seconds": round(cpu_seconds() - cpu0, 1)}  # fmt: skip


def val_curve(live: Path) -> list[list]:
    """[[step, validation loss on the first eval_batches batches], ...] from the cell's dvclive folder."""
    tsv = live / "plots/metrics/val/loss.tsv"
    rows = tsv.read_text().splitlines()[1:] if tsv.exists() else []
    return [[int(r.split("\t")[0]), round(float(r.split("\t")[1]), 4)] for r in rows]


def ft_key(ft: dict) -> str:
    if ft.get("init") == "scratch":
        return f"scratch_{ft['pooling']}_s{ft['seed']}"
    return f"full_{ft['pooling']}_x{ft['lr_scale']:g}_s{ft['seed']}"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def update_report(name: str, entry: dict) -> dict:
    """Merge one cell's entry into the report under a lock (two grid processes may finish at once)."""
    path = REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(path.read_text()) if path.exists() else {"cells": {}}
        if entry:
            report["cells"][name] = entry
        write_json(report, path)
    return report


def run_cell(name: str, cell: dict, done: dict) -> None:
    entry = done.get(name, {})
    before = entry.get("spec", {})
    if (before.get("pretrain"), before.get("corpus")) != (cell["pretrain"], cell.get("corpus")):
        entry = {}  # another pre-training: measured afresh (fine-tuning runs are kept by their key)
    entry["spec"] = cell
    if "pretrain" not in entry:
        entry["params"] = dataclasses.asdict(cell_params(cell["pretrain"]))
        entry["pretrain"] = pretrain_cell(name, cell)
    if "val_curve" not in entry["pretrain"]:
        entry["pretrain"]["val_curve"] = val_curve(WORK / name / "live")
    update_report(name, entry)
    runs = {r["run"]: r for r in entry.get("finetune", [])}
    for ft in cell["finetune"]:
        if ft_key(ft) not in runs:
            runs[ft_key(ft)] = finetune_cell(name, cell, ft)
            entry["finetune"] = list(runs.values())
            update_report(name, entry)


def markdown(report: dict) -> str:
    """One row per cell: its recipe, validation perplexity, seconds, and each fine-tuning run's best validation
    accuracy. Written by `python -m bench.pretrain_recipe`; the JSON beside it has every number."""
    lines = [
        "# Pre-training recipes: validation numbers (generated by `python -m bench.pretrain_recipe`)",
        "",
        "Validation perplexity: every validation block of the cell's corpus (the WEB-only cell has its own blocks",
        "and BPE, so its perplexity compares with no other row). Seconds: the pretrain loop's wall clock and the",
        "process's CPU seconds (closing validation and save included), one thread, on cores other jobs shared:",
        "compare CPU seconds. Fine-tuning: `full` (or `scratch`) at pooling / lr, best validation accuracy of 658",
        "verses (early stopping reads validation too), seed s.",
        "",
        "| cell | varies | recipe | tokens | val ppl | val loss by step (first 160 blocks) | train s | CPU s | "
        "fine-tuning: best val accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report["cells"].items():
        spec, m, q = e["spec"], e.get("pretrain", {}), e.get("params", {})
        recipe = (f"{q.get('optimizer')} {q.get('lr'):g}, {q.get('schedule')}, {q.get('max_steps')} x "
                  f"{q.get('batch_size')}, {spec.get('corpus', 'all')}") if q else ""  # fmt: skip
        fts = "; ".join(
            f"{r['run'].split('_')[0]} {r['pooling']}"
            + ("" if r["run"].startswith("scratch") else f" lr {r['lr']:.0e}")
            + f" s{r['seed']}: **{r['best_val_accuracy']:.3f}**"
            for r in e.get("finetune", [])
        )
        tokens = f"{m['tokens_seen'] / 1e6:.2f}M" if "tokens_seen" in m else ""
        curve = ", ".join(f"{step}: {loss:.3f}" for step, loss in m.get("val_curve", []))
        lines.append(f"| {name} | {spec.get('note', '')} | {recipe} | {tokens} | {m.get('val_perplexity', '')} | "
                     f"{curve} | {m.get('train_seconds', '')} | {m.get('cpu_seconds') or ''} | {fts} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain_recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--cells", help="comma-separated cell names (default: every cell of GRID)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = args.cells.split(",") if args.cells else list(GRID)
    if unknown := [n for n in names if n not in GRID]:
        parser.error(f"--cells: unknown {', '.join(unknown)}; known: {', '.join(GRID)}")
    torch.set_num_threads(args.threads)
    if not args.report:
        for name in names:
            start = time.perf_counter()
            run_cell(name, GRID[name], update_report(name, {})["cells"])
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    report = update_report("", {})
    write_text(markdown(report), REPORT.with_suffix(".md"))


if __name__ == "__main__":
    main()
