"""Presets: each is valid, digits.yaml is the defaults and the base of every preset, so the result of
applying a preset never depends on what was applied before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from _support import REPO
from tlpipe.config import params as P, presets
from tlpipe.errors import PipelineError
from tlpipe.config.params import flatten

PRESETS = sorted(p.stem for p in (REPO / "presets").glob("*.yaml"))


def _keys(d: dict, prefix: str = "") -> dict:
    return flatten(d, prefix)


def _apply(tmp_path: Path, *names: str) -> dict:
    params = tmp_path / "params.yaml"
    if not params.exists():
        shutil.copy(REPO / "params.yaml", params)
    for name in names:
        presets.apply(REPO / "presets" / f"{name}.yaml", params)
    return yaml.safe_load(params.read_text())


def test_reference_workflows_have_presets():
    assert {"digits", "gtsrb", "cifar10", "food", "sign_digits", "gtsrb_resnet34"} <= set(PRESETS)


def test_base_is_the_defaults_and_names_every_key_a_preset_sets():
    base = _keys(presets.read(REPO / "presets/digits.yaml"))
    defaults = _keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    for key, value in base.items():
        assert defaults[key] == value, f"presets/digits.yaml {key}={value!r} but params.yaml has {defaults[key]!r}"
    for name in PRESETS:
        missing = set(_keys(presets.read(REPO / f"presets/{name}.yaml"))) - set(base)
        assert not missing, f"presets/{name}.yaml sets {sorted(missing)}, which presets/digits.yaml must reset"


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_applies_to_valid_params_and_keeps_comments(name, tmp_path):
    result = _apply(tmp_path, name)
    P.validate(result)
    text = (tmp_path / "params.yaml").read_text()
    assert "# one seed for splitting" in text  # comments survive
    for key, value in _keys(presets.read(REPO / f"presets/{name}.yaml")).items():
        assert _keys(result)[key] == value


@pytest.mark.parametrize("first", PRESETS)
def test_result_does_not_depend_on_the_preset_applied_before(first, tmp_path):
    for name in PRESETS:
        alone = _apply(tmp_path / f"alone-{name}", name) if (tmp_path / f"alone-{name}").mkdir() is None else None
        (tmp_path / f"after-{first}-{name}").mkdir()
        after = _apply(tmp_path / f"after-{first}-{name}", first, name)
        assert after == alone, (first, name)


def test_digits_preset_restores_the_defaults(tmp_path):
    assert _apply(tmp_path, "gtsrb_resnet34", "digits") == yaml.safe_load((REPO / "params.yaml").read_text())


def test_unknown_preset_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(PipelineError, match="unknown key model.backbon"):
        presets.apply(bad, tmp_path / "params.yaml", base=REPO / "presets/digits.yaml")


def test_missing_preset_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="preset not found"):
        presets.apply(tmp_path / "nope.yaml", REPO / "params.yaml")


def test_applying_the_defaults_changes_no_byte(tmp_path):
    _apply(tmp_path, "digits")
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_only_changed_lines_change_and_comments_stay(tmp_path):
    _apply(tmp_path, "cifar10")
    before = (REPO / "params.yaml").read_text().splitlines()
    after = (tmp_path / "params.yaml").read_text().splitlines()
    comments = lambda lines: [ln.split("#", 1)[1] for ln in lines if "#" in ln]  # noqa: E731
    assert comments(after) == comments(before)
    assert "  known_classes: {0: airplane, 1: automobile" in "\n".join(after)
