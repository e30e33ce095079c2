"""gate: run a Great Expectations suite on a stage's artifact before any later stage may use it.

Reads  the artifact of <name> (stages/suites.py says which: data/raw, data/1_ingest, ..., models/7_finetune)
Writes reports/gates/<name>.json  every expectation with its observed value and bound; written only on success,
                                  and the next stage depends on it, so a failed gate stops the pipeline there
       reports/data_docs/<name>/  GX Data Docs of the run, pass or fail (open index.html; not tracked)

    python -m stages.gate raw         # or ingest, clean, tokenize, augment, predictions

The suites (what each gate checks) live in stages/suites.py, one function per artifact; this module runs them in
one ephemeral GX context and reports. A failure prints the gate, the expectation, the column, the observed value
against the bound and up to 5 offending rows, and exits 1.
"""

import argparse
import copy
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
import yaml

from stages.common import PARAMS_FILE, write_json
from stages.presets import load_params
from stages.suites import GATES, Keyed

REPORTS = Path("reports/gates")
DOCS = Path("reports/data_docs")  # GX Data Docs, one site per gate (gitignored: rebuilt on every run)
EXAMPLES = 5  # offending rows shown per failed expectation


def shown(value, width: int = 80):
    """A value short enough for a message and valid JSON: long strings and id lists cut, NumPy made plain."""
    if isinstance(value, np.ndarray | list):
        value = list(np.asarray(value).tolist())
        return value if len(value) <= 8 else f"[{', '.join(map(str, value[:8]))}, ...] ({len(value)} ids)"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and len(value) > width:
        return f"{value[:width]}... ({len(value)} chars)"
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def exception_message(info: dict) -> str | None:
    """The error GX caught while computing an expectation (a missing column, a bad type), if any."""
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    return next((v["exception_message"] for v in info.values() if v.get("raised_exception")), None)


def observed_stats(kind: str, values: pd.Series) -> dict:
    """What a column holds, for the report: its range for a bound, its value counts for a set (if few)."""
    if kind == "expect_column_value_lengths_to_be_between":
        values = values.dropna().str.len()
    if kind in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        return {"min": shown(values.min()), "max": shown(values.max())} if values.notna().any() else {}
    if kind == "expect_column_values_to_be_in_set" and values.nunique() <= 10:
        return {"counts": {str(k): int(n) for k, n in values.value_counts().items()}}
    return {}


def summarize(table: str, df: pd.DataFrame, result: dict) -> dict:
    """One expectation's result (GX's JSON dict) as a report entry with up to EXAMPLES offending rows."""
    config, res = result["expectation_config"], result["result"]
    kind = config["type"]
    bound = {k: shown(v) for k, v in config["kwargs"].items() if v is not None and k not in ("batch_id", "column")}
    column = config["kwargs"].get("column") or ", ".join(bound.pop("column_list", []))
    if "observed_value" in res:
        observed = shown(res["observed_value"])
    else:
        values = res.get("partial_unexpected_list", [])
        if kind == "expect_column_value_lengths_to_be_between":
            values = [len(v) for v in values]
        observed = {"unexpected_count": res.get("unexpected_count"), "element_count": res.get("element_count")}
        observed |= observed_stats(kind, df[column]) if column in df else {}
        observed["unexpected_values"] = [shown(v) for v in values]
    rows = [
        {"row": int(i), **{k: shown(v) for k, v in df.loc[i].items()}}
        for i in res.get("partial_unexpected_index_list", [])[:EXAMPLES]
    ]
    entry = {"table": table, "expectation": kind, "column": column or None, "success": bool(result["success"])}
    if config.get("description"):
        entry["description"] = config["description"]
    if params := (config.get("meta") or {}).get("params"):
        entry["params"] = params  # bound -> the params.yaml key that sets it
    entry |= {"observed": observed, "bound": bound, "unexpected_examples": rows}
    if error := exception_message(result.get("exception_info") or {}):
        entry["error"] = error
    return entry


def validate(tables: dict, docs: Path | None = None) -> list[dict]:
    """Every table validated against its expectations in one ephemeral GX context; report entries in order.

    docs: a folder to render GX Data Docs (HTML) of this run into, or None for no HTML.
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("artifacts")
    entries = []
    for table, (df, expectations) in tables.items():
        df = df.reset_index(drop=True)  # offending rows are looked up by GX's index
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=[copy.copy(e) for e in expectations]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": df},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
        )
        entries += [summarize(table, df, r.to_json_dict()) for r in result.results]
    if docs is not None:
        shutil.rmtree(docs, ignore_errors=True)
        site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
        site["store_backend"] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())}
        context.add_data_docs_site(site_name="gate", site_config=site)
        context.build_data_docs(site_names=["gate"])
    return entries


def check(name: str, p, docs: Path | None = None, **paths) -> dict:
    """The gate's summary, {gate, success, expectations: [...]}; paths go to the gate's tables function."""
    entries = validate(GATES[name][1](Keyed(p, f"gate.{name}"), **paths), docs)
    return {"gate": name, "success": all(e["success"] for e in entries), "expectations": entries}


def failure_message(summary: dict) -> str:
    """What a person needs to act on a failed gate: each failed expectation, its observed value, bound and rows."""
    failed = [e for e in summary["expectations"] if not e["success"]]
    lines = [f"gate {summary['gate']} failed: {len(failed)} of {len(summary['expectations'])} expectations not met"]
    for e in failed:
        on = f" on column {e['column']!r}" if e["column"] else ""
        why = f" ({e['description']})" if e.get("description") else ""
        keys = e.get("params", {})  # the params.yaml key of each bound that has one
        bound = ", ".join(f"{k}={v!r}" + (f" (set by {keys[k]})" if k in keys else "") for k, v in e["bound"].items())
        bound = bound or "none"
        obs = e["observed"]
        if isinstance(obs, dict):
            held = ", ".join(f"{k} {obs[k]}" for k in ("min", "max", "counts") if k in obs)
            held = f" (column {held})" if held else ""
            obs = f"{obs['unexpected_count']} of {obs['element_count']} rows outside{held}"
            obs += f", e.g. {e['observed']['unexpected_values']}"
        lines += [f"- {e['table']}: {e['expectation']}{on}{why}", f"    observed {obs}; bound {bound}"]
        if e.get("error"):
            lines.append(f"    error: {e['error']}")
        for row in e["unexpected_examples"]:
            lines.append(f"    row {row['row']}: " + ", ".join(f"{k}={v!r}" for k, v in row.items() if k != "row"))
    return "\n".join(lines)


def run(name: str, p, report: Path | None = None, docs: Path | None = None, **paths) -> dict:
    """Check the artifact; on success write the report, on failure remove any stale one, explain, and exit 1.

    report: defaults to reports/gates/<name>.json; docs: where to render Data Docs HTML (None: none).
    """
    report = Path(report) if report else REPORTS / f"{name}.json"
    summary = check(name, p, docs, **paths)
    if not summary["success"]:
        report.unlink(missing_ok=True)  # a report from an earlier pass must not let the next stage run
        print(failure_message(summary), file=sys.stderr)
        raise SystemExit(1)
    write_json(summary, report)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.gate", description="Check a stage's artifact with its GX suite."
    )
    parser.add_argument("name", choices=list(GATES), help="the stage whose output to check")
    name = parser.parse_args().name
    start = time.perf_counter()
    paths = {}
    if name == "predictions":  # the runs evaluate scores: every key of finetune.runs
        paths["runs"] = list(yaml.safe_load(PARAMS_FILE.read_text())["finetune"]["runs"])
    summary = run(name, load_params(f"gate.{name}", GATES[name][0]), docs=DOCS / name, **paths)
    took = time.perf_counter() - start
    print(f"gate {name}: all {len(summary['expectations'])} expectations met in {took:.1f} s -> {REPORTS / name}.json")


if __name__ == "__main__":
    main()
