"""The field's claims and how an interval decides them: one definition, used by evaluate and the study.

A claim compares run a with run b on the same test verses: "a beats b by >= t points" (at_least) or "a is within
t points of b" (within). Its verdict comes from the 95% interval of the paired gap, never from the point estimate:
holds where the whole interval clears the threshold, does not hold where the whole interval misses it, and is
not resolved where the interval straddles it. Whether the interval is clear of 0 is said beside.

    verdict(Claim("c", "full", "scratch", 10), [2.1, 7.9]) -> "does not hold"
    verdict(Claim("c", "lora", "full", 2, "within"), [-3.0, 1.0]) -> "not resolved"

"a is not below b" and "a reaches b" are at_least claims with threshold 0: they hold where the whole interval lies
above 0 (a shown better), do not hold where it lies below 0 (a shown worse), and are not resolved where it straddles
0 (neither shown: the data do not put a below b, nor above it).

Baselines (init none) are told apart by their method: TF-IDF (tfidf_logreg, or no method given), a probe of a
sentence encoder's frozen embeddings (probe_logreg) and SetFit (setfit_logreg).
"""

from dataclasses import dataclass

HOLDS, FAILS, OPEN = "holds", "does not hold", "not resolved"
TFIDF, PROBE, SETFIT = "tfidf_logreg", "probe_logreg", "setfit_logreg"  # a baseline's method (stages.baseline)


@dataclass(frozen=True)
class Claim:
    text: str  # what is claimed, in the report's words
    a: str  # the run the claim is about
    b: str  # the run it is compared with
    threshold: float  # points
    kind: str = "at_least"  # at_least: a - b >= threshold; within: |a - b| <= threshold


def verdict(claim: Claim, ci: list[float]) -> str:
    """holds / does not hold / not resolved, from the gap's interval [lo, hi] in points."""
    lo, hi = ci
    t = claim.threshold
    if claim.kind == "within":
        if -t <= lo and hi <= t:
            return HOLDS
        return FAILS if hi < -t or lo > t else OPEN
    if lo >= t and lo > 0:
        return HOLDS
    return FAILS if hi < t else OPEN


def sign(ci: list[float]) -> str:
    """Where the interval lies against 0: "above 0", "below 0" or "includes 0"."""
    return "above 0" if ci[0] > 0 else "below 0" if ci[1] < 0 else "includes 0"


def applicable(runs: dict[str, dict]) -> list[Claim]:
    """The claims the present runs can test. `runs` maps a run name to its "init" (scratch, pretrained, checkpoint,
    none: a baseline), "augmented", and optionally "method" (a baseline's kind) and "best_val_accuracy" (which own
    run is the pipeline's best); a run named like another plus `_bt` is that run with back-translation."""
    out = []
    if {"full", "scratch"} <= set(runs):
        out.append(Claim("Pre-training then fine-tuning beats training from scratch by >= 10 points", "full",
                         "scratch", 10))  # fmt: skip
    if {"lora", "full"} <= set(runs):
        out.append(Claim("LoRA comes within 2 points of full fine-tuning", "lora", "full", 2, "within"))
    if {"qlora", "lora"} <= set(runs):
        out.append(Claim("QLoRA (a 4-bit body) comes within 2 points of LoRA", "qlora", "lora", 2, "within"))
    for base, b in runs.items():  # each pre-trained run against the classical baseline with the same augmentation
        if b["init"] != "none" or b.get("method", TFIDF) != TFIDF:
            continue
        for name, r in runs.items():
            if r["init"] in ("pretrained", "checkpoint") and r["augmented"] == b["augmented"]:
                out.append(Claim(f"Fine-tuning beats TF-IDF + logistic regression ({name} vs {base})", name, base, 0))
    for name in runs:
        if name.endswith("_bt") and name[:-3] in runs:
            out.append(Claim(f"Back-translation adds >= 2 points ({name} vs {name[:-3]})", name, name[:-3], 2))
    if {"minilm_dapt", "minilm"} <= set(runs):
        out.append(Claim("Domain-adaptive pre-training helps the real checkpoint", "minilm_dapt", "minilm", 0))
    if {"minilm_dapt", "tfidf"} <= set(runs):
        out.append(Claim("Domain-adapted MiniLM beats TF-IDF by >= 5 points", "minilm_dapt", "tfidf", 5))
    if {"minilm_dapt", "minilm_probe"} <= set(runs):
        out.append(
            Claim("Domain-adapted MiniLM is not below the frozen-MiniLM probe", "minilm_dapt", "minilm_probe", 0)
        )
    bars = [name for name, r in runs.items() if r["init"] == "none" and r.get("method") in (PROBE, SETFIT)]
    for own in best_own(runs) if bars else []:
        for bar in bars:
            out.append(Claim(f"The pipeline's own pre-training reaches the modern few-label bar ({own} vs {bar})", own,
                             bar, 0))  # fmt: skip
    return out


def best_own(runs: dict[str, dict]) -> list[str]:
    """The pipeline's best run on its own pre-training (init pretrained): the one of highest "best_val_accuracy" where
    every such run has one (chosen on validation, never on test), else all of them.

    {"full": {"init": "pretrained", "best_val_accuracy": 0.4}, "lora": {..., 0.42}} -> ["lora"]
    """
    own = {name: r for name, r in runs.items() if r["init"] == "pretrained"}
    if own and all("best_val_accuracy" in r for r in own.values()):
        return [max(own, key=lambda name: own[name]["best_val_accuracy"])]  # the first of equals
    return list(own)


def line(claim: Claim, gap: dict, where: str = "") -> str:
    """One report line: the claim, its verdict, the gap with its interval and where it lies against 0."""
    lo, hi = gap["ci95"]
    v = verdict(claim, gap["ci95"])
    rule = f"within +-{claim.threshold:g}" if claim.kind == "within" else f">= {claim.threshold:+g}"
    return (f"- {claim.text}{where}: **{v}** ({claim.a} - {claim.b} = {gap['gap']:+.1f} points, 95% CI "
            f"[{lo:+.1f}, {hi:+.1f}], {sign(gap['ci95'])}; needs {rule})")  # fmt: skip
