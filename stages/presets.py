"""presets: the cleaning filters and gate bounds that depend on the kind of text, picked by one line of params.yaml.

Reads  params.yaml                           `preset:` and its `clean:` / `gate:` sections
       params/presets/<preset>.yaml          the preset's `clean:` / `gate:` keys (next to the params file)

    chapters    documents of many lines: the bundled Bible chapters (the default; today's values)
    short_text  one-line documents: reviews, verses, titles
    web         web pages: datatrove's / FineWeb's published defaults

A section is params.yaml's laid over the preset's: a key set in params.yaml (or by `dvc exp run -S '+clean...'`)
wins, mappings merge key by key. `clean` and `gate` load their params here instead of stages.common.load_params:

    load_params("clean", CleanParams)   # params.yaml's clean over params/presets/chapters.yaml's clean
"""

from pathlib import Path

import yaml

from stages.common import PARAMS_FILE, ParamsError, from_dict

SECTIONS = ("clean", "gate")  # what a preset may set


def folder(params_file: Path) -> Path:
    """Where the presets of a params file live: params.yaml -> params/presets/."""
    return Path(params_file).parent / "params" / "presets"


def overlay(base, top):
    """`top` laid over `base`: mappings merged key by key, anything else replaced by top's.

    overlay({'a': {'x': 1, 'y': 2}, 'b': [1]}, {'a': {'y': 3}, 'b': [2]}) -> {'a': {'x': 1, 'y': 3}, 'b': [2]}
    """
    if not (isinstance(base, dict) and isinstance(top, dict)):
        return top
    return {**base, **{k: overlay(base[k], v) if k in base else v for k, v in top.items()}}


def read_preset(name, params_file: Path = PARAMS_FILE) -> dict:
    """The preset file's {clean: ..., gate: ...}; an unknown name or a key other than clean/gate fails in one line."""
    here = folder(params_file)
    available = sorted(p.stem for p in here.glob("*.yaml"))
    if name not in available:
        raise ParamsError(f"{params_file}: preset: unknown preset {name!r}; available: {', '.join(available)}")
    path = here / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        other = sorted(set(data) - set(SECTIONS)) if isinstance(data, dict) else [repr(data)]
        raise ParamsError(f"{path}: a preset holds only clean: and gate: keys, got {', '.join(map(str, other))}")
    return data


def resolve(params: dict, params_file: Path = PARAMS_FILE) -> dict:
    """params.yaml's mapping with its `preset`'s clean and gate laid under its own; no `preset` key: as it is."""
    if "preset" not in params:
        return params
    preset = read_preset(params["preset"], params_file)
    return {**params, **{s: overlay(preset.get(s) or {}, params.get(s) or {}) for s in SECTIONS}}


def load_params(section: str, cls, path: Path = PARAMS_FILE):
    """The `section` of params.yaml, its preset resolved, as a frozen dataclass `cls` (a dotted section reads a
    nested key); stages.common.load_params's errors, the preset's own added."""
    with open(path) as f:
        node = resolve(yaml.safe_load(f) or {}, path)
    for key in section.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"{path}: missing section {section!r} (no key {key!r})")
        node = node[key]
    return from_dict(cls, node, f"{path}: {section}")
