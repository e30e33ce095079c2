"""Apertium, the rule-based machine translation system (GPL; Debian packages), as a batch translator.

    translate(["Jesus wept.", "The king went home."], "eng-spa") -> ["Jesus lloró.", "El rey fue en casa."]

PIVOTS maps each pivot language of back-translation to its two modes (English -> pivot, pivot -> English) and the
Debian package that holds them. Only the standard library is used, so `python3 -m scripts.apertium` (setup) runs
before any virtualenv exists.

A batch is one process per direction: the mode's pipeline (`apertium-wblank-mode -z`: lt-proc, tagger, transfer,
generator, ...) in null-flush mode, fed every text as its own NUL-terminated segment, so no text shares context
with its neighbours and none can spill into the next. Each segment is `[<index>]<escaped text>[]`: the index is a
superblank that Apertium passes through untouched, so the output is checked to hold exactly the indices sent, in
order (anything else fails loudly); the closing superblank keeps a verse's final period, which Apertium drops at
the very end of a segment. Newlines and other control characters become spaces, and the stream's markup characters
(`\\ ^ $ [ ] / < > @ { }`) are backslash-escaped as `apertium-destxt` does, then unescaped again.

The generator runs with `-n`, which is what `apertium -u` passes: unknown words come out bare, without Apertium's
marks (`*word` unknown, `@word` no bilingual entry, `#word` no generation), which would otherwise pollute the
paraphrases with symbols no verse has.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

PIVOTS = {  # pivot -> (English -> pivot mode, pivot -> English mode, Debian package)
    "spa": ("eng-spa", "spa-eng", "apertium-eng-spa"),
    "cat": ("eng-cat", "cat-eng", "apertium-eng-cat"),
    "glg": ("en-gl", "gl-en", "apertium-en-gl"),
    "epo": ("en-eo", "eo-en", "apertium-eo-en"),
}
ENGINE = ("apertium", "lttoolbox", "apertium-lex-tools", "cg3")  # the tools every mode runs (their versions matter)
PACKAGES = ("apertium", *(package for _, _, package in PIVOTS.values()))
INSTALL = f"sudo apt-get install {' '.join(PACKAGES)}"
MARKUP = re.compile(r"([\\^$\[\]/<>@{}])")  # what apertium-destxt escapes in plain text
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")  # newlines, tabs, NUL (our segment end), ...
SEGMENT = re.compile(r"\[(\d+)\](.*)\[\]\s*", re.S)  # one translated segment: index superblank, text, closing blank


def datadir() -> Path:
    """Where the modes live: $APERTIUM_DATADIR, as the `apertium` script reads it, or Debian's folder."""
    return Path(os.environ.get("APERTIUM_DATADIR", "/usr/share/apertium"))


def installed_modes() -> set[str]:
    """The modes `apertium -l` lists (its data folder's modes/*.mode); empty without Apertium's tools."""
    if shutil.which("apertium-wblank-mode") is None:
        return set()
    return {f.name.removesuffix(".mode") for f in (datadir() / "modes").glob("*.mode")}


def missing(pivots: list[str]) -> str | None:
    """Why these pivots cannot be translated (one paragraph: what is missing, the command, the fallback), or None.

    missing(["spa"]) -> None where apertium-eng-spa is installed
    """
    modes = installed_modes()
    lacking = [f"{pivot} ({PIVOTS[pivot][0]}/{PIVOTS[pivot][1]}, package {PIVOTS[pivot][2]})"
               for pivot in pivots if not {PIVOTS[pivot][0], PIVOTS[pivot][1]} <= modes]  # fmt: skip
    if not lacking:
        return None
    return (
        f"Apertium cannot translate the pivot(s) {', '.join(lacking)}: not installed; install it with `{INSTALL}`\n"
        f"or back-translate with the pipeline's own translators instead: augment.translators: pipeline in params.yaml"
    )


def versions(pivots: list[str]) -> dict[str, str | None]:
    """The installed Debian versions of the engine and the pivots' packages (None: not known to dpkg).

    versions(["spa"]) -> {"apertium": "3.8.3-1+b2", ..., "apertium-eng-spa": "0.8.1-2"}
    """
    out = {}
    for package in (*ENGINE, *(PIVOTS[p][2] for p in pivots)):
        try:
            found = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
            out[package] = found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else None
        except FileNotFoundError:  # no dpkg: Apertium built from source
            out[package] = None
    return out


def clean(text: str) -> str:
    """A text as Apertium gets it: control characters (newlines, NUL) as one space, outer spaces gone.

    clean("The king\\nwent home. ") -> "The king went home."
    """
    return CONTROL.sub(" ", text).strip()


def escape(text: str) -> str:
    """escape("a [b] ^c$") -> "a \\\\[b\\\\] \\\\^c\\\\$" (each markup character backslash-escaped)."""
    return MARKUP.sub(r"\\\1", text)


def unescape(text: str) -> str:
    """The inverse of escape, and spaces squeezed (a dropped word leaves two): "a \\\\[b\\\\]  c" -> "a [b] c"."""
    return re.sub(r" {2,}", " ", re.sub(r"\\(.)", r"\1", text)).strip()


def match_case(text: str, like: str) -> str:
    """`text` with its first letter upper-cased when `like`'s is: a verse translated alone may come back starting
    in lower case. match_case("but he said.", "But he said.") -> "But he said."
    """
    if text[:1].islower() and like.lstrip()[:1].isupper():
        return text[0].upper() + text[1:]
    return text


def round_trip(texts: list[str], pivot: str, middle: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(pivot texts, English again) through the pivot's two modes (the first pass skipped when `middle` gives its
    output); the English keeps each source's first capital."""
    there, back, _ = PIVOTS[pivot]
    middle = translate(texts, there) if middle is None else middle
    return middle, [match_case(e, t) for e, t in zip(translate(middle, back), texts, strict=True)]


def translate(texts: list[str], mode: str) -> list[str]:
    """Each text translated by the Apertium mode (e.g. "eng-spa"), in order, in one process pipeline.

    An empty text (after clean) is not sent and comes back "". Raises RuntimeError when the mode is not installed,
    the pipeline fails, or its output does not hold one segment per text sent, in order.
    """
    file = datadir() / "modes" / f"{mode}.mode"
    if mode not in installed_modes():
        raise RuntimeError(f"the Apertium mode {mode} is not installed ({file} missing)")
    sent = [(i, clean(t)) for i, t in enumerate(texts)]
    sent = [(i, t) for i, t in sent if t]
    out = [""] * len(texts)
    if not sent:
        return out
    script = subprocess.run(["apertium-wblank-mode", "-z", str(file)], capture_output=True, text=True, check=True)
    stream = "".join(f"[{i}]{escape(t)}[]\0" for i, t in sent)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}  # Apertium's tools read UTF-8 only under a UTF-8 locale
    # $1 = the generator's flag (-n, as `apertium -u`), $2 = the tagger's (none)
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {script.stdout}", mode, "-n", ""], input=stream,
                          capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"apertium {mode} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    segments = [s for s in done.stdout.split("\0") if s.strip()]  # each tool flushes a few empty segments at the end
    matched = [SEGMENT.fullmatch(s) for s in segments]
    got = [int(m.group(1)) if m else None for m in matched]
    if got != [i for i, _ in sent]:
        wrong = next((seg for seg, g, (i, _) in zip(segments, got, sent, strict=False) if g != i), segments[-1:])
        raise RuntimeError(
            f"apertium {mode}: {len(segments)} segments came back for {len(sent)} sent, or out of order; the first "
            f"wrong one: {str(wrong)[:200]!r}"
        )
    for (i, _), m in zip(sent, matched, strict=True):
        out[i] = unescape(m.group(2))
    return out
