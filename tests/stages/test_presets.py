"""presets: params.yaml's clean/gate laid over the preset's (params.yaml wins, mappings merge key by key), the bundled
default resolving to the values the bundled run had before presets, and errors that name the key or the file."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from stages import common
from stages.clean import CleanParams
from stages.common import ParamsError
from stages.presets import load_params, overlay, read_preset
from stages.suites import GATES
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ["chapters", "short_text", "web"]
BEFORE = "9485a3b"  # the last commit whose params.yaml held every clean/gate key itself (no presets)


def project(tmp_path: Path, params: dict, presets: dict[str, dict]) -> Path:
    """tmp_path/params.yaml and tmp_path/params/presets/<name>.yaml; returns the params file."""
    (tmp_path / "params/presets").mkdir(parents=True)
    for name, data in presets.items():
        (tmp_path / f"params/presets/{name}.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class Section:
    x: int
    inner: Inner


def test_overlay_merges_mappings_key_by_key_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 3}
    assert overlay(base, {"a": {"y": 3}, "b": [9]}) == {"a": {"x": 1, "y": 3}, "b": [9], "c": 3}
    assert overlay(base, {}) == base and overlay({}, base) == base
    assert overlay({"a": {"x": 1}}, {"a": None}) == {"a": None}  # a non-mapping replaces a mapping


def test_a_key_in_params_yaml_wins_over_the_preset_and_the_rest_comes_from_the_preset(tmp_path):
    preset = {"clean": {"x": 1, "inner": {"a": 1, "b": 2}}}
    path = project(tmp_path, {"preset": "p", "clean": {"inner": {"b": 5}}}, {"p": preset})
    assert load_params("clean", Section, path) == Section(x=1, inner=Inner(a=1, b=5))
    path = project(tmp_path / "2", {"preset": "p", "clean": {"x": 7}}, {"p": preset})  # `dvc exp run -S +clean.x=7`
    assert load_params("clean", Section, path) == Section(x=7, inner=Inner(a=1, b=2))


def test_without_a_preset_key_params_yaml_is_read_as_it_is(tmp_path):
    path = project(tmp_path, {"clean": {"x": 1, "inner": {"a": 1, "b": 2}}}, {})
    assert load_params("clean", Section, path) == common.load_params("clean", Section, path)
    path = project(tmp_path / "2", {"clean": {"x": 1}}, {})
    with pytest.raises(ParamsError, match=r"clean: missing key\(s\) inner"):
        load_params("clean", Section, path)


def test_an_unknown_preset_fails_in_one_line_naming_the_key_and_the_presets_there_are(tmp_path):
    path = project(tmp_path, {"preset": "tweets", "clean": {}}, {"chapters": {}, "web": {}})
    with pytest.raises(ParamsError) as e:
        load_params("clean", Section, path)
    assert str(e.value) == f"{path}: preset: unknown preset 'tweets'; available: chapters, web"


def test_a_preset_with_keys_other_than_clean_and_gate_fails_naming_the_file(tmp_path):
    path = project(tmp_path, {"preset": "p"}, {"p": {"clean": {}, "tokenize": {"block_size": 8}}})
    with pytest.raises(ParamsError, match=r"params/presets/p\.yaml: a preset holds only clean: and gate: keys, got "
                       "tokenize"):  # fmt: skip
        load_params("clean", Section, path)


def test_a_mistyped_key_over_a_preset_is_refused_with_its_name(tmp_path):
    preset = {"clean": {"x": 1, "inner": {"a": 1, "b": 2}}}
    path = project(tmp_path, {"preset": "p", "clean": {"inner": {"bb": 5}}}, {"p": preset})
    with pytest.raises(ParamsError, match=r"clean\.inner: unknown key\(s\) bb"):
        load_params("clean", Section, path)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_sets_every_clean_filter_and_gate_bound_params_yaml_leaves_to_it(preset, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = read_preset(preset, ROOT / "params.yaml")
    path = project(tmp_path, {**params, "preset": preset}, {preset: data})
    load_params("clean", CleanParams, path)  # a missing or mistyped key would fail, naming it
    for name, (cls, _) in GATES.items():
        load_params(f"gate.{name}", cls, path)
    assert set(data) == {"clean", "gate"}


def test_the_bundled_default_resolves_to_the_values_the_bundled_run_had_before_presets(tmp_path):
    """With `preset: chapters`, clean and every gate read exactly what params.yaml held at BEFORE, so their
    outputs (which record their params) stay byte-identical."""
    shown = subprocess.run(["git", "show", f"{BEFORE}:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode:
        pytest.skip(f"no git history with {BEFORE} here: {shown.stderr.strip()}")
    before = tmp_path / "params.yaml"
    before.write_text(shown.stdout)
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["preset"] == "chapters"
    now = ROOT / "params.yaml"
    assert load_params("clean", CleanParams, now) == common.load_params("clean", CleanParams, before)
    for name, (cls, _) in GATES.items():
        assert load_params(f"gate.{name}", cls, now) == common.load_params(f"gate.{name}", cls, before), name


def test_tiny_params_adds_an_override_of_a_preset_key_to_params_yaml_where_it_wins():
    params = tiny_params({"preset": "short_text", "clean.gopher_quality.min_doc_words": 5})
    assert params["preset"] == "short_text"
    assert params["clean"]["gopher_quality"] == {"min_doc_words": 5}  # only the override: the rest stays the preset's
    with pytest.raises(KeyError, match="names no key"):
        tiny_params({"clean.gopher_quality.min_doc_wordz": 5})


def test_the_clean_stage_and_every_gate_depend_on_the_preset():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "clean" or name.startswith("gate_"):
            assert "preset" in stage["params"], name
            assert {"stages/presets.py", "params/presets"} <= set(stage["deps"]), name
