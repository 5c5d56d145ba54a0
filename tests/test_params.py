"""params.py: the repository's params.yaml validates; every kind of mistake is a PipelineError naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tlpipe.config import params as P
from tlpipe.errors import PipelineError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


@pytest.fixture
def p(base) -> dict:
    return copy.deepcopy(base)


def _error(params: dict) -> str:
    with pytest.raises(PipelineError) as info:
        P.validate(params)
    return str(info.value)


def test_repo_params_yaml_loads_and_validates():
    params = P.load(REPO_PARAMS)
    assert params["model"]["backbone"]
    assert set(P.SCHEMA) == set(params)
    # train holds every shared phase key; each phase section its own keys (and only what differs)
    assert set(P.SHARED) <= set(params["train"])
    for section in (params["train_head"], params["retrain"]["head"]):
        assert {k for k, f in P.HEAD_PHASE.items() if f.required} <= set(section) <= set(P.HEAD_PHASE)
    for section in (params["finetune"], params["retrain"]["finetune"]):
        assert {k for k, f in P.TUNE_PHASE.items() if f.required} <= set(section) <= set(P.TUNE_PHASE)


def test_validate_returns_the_mapping_unchanged(p):
    before = copy.deepcopy(p)
    assert P.validate(p) is p
    assert p == before


@pytest.mark.parametrize(
    "section, bad, good",
    [
        ("train", "lrr", "lr"),
        ("finetune", "lr_scal", "lr_scale"),
        ("train_head", "epoch", "epochs"),
        ("model", "backbon", "backbone"),
        ("split", "tran", "train"),
    ],
)
def test_unknown_key_names_it_and_suggests_closest(p, section, bad, good):
    p[section][bad] = p[section][good]
    msg = _error(p)
    assert f"{section}.{bad}" in msg
    assert f"did you mean {good!r}" in msg


def test_unknown_top_level_key_suggests(p):
    p["sead"] = 1
    msg = _error(p)
    assert "unknown key sead" in msg and "did you mean 'seed'" in msg


def test_unknown_key_without_close_match_has_no_suggestion(p):
    p["finetune"]["zzzzqqqq"] = 1
    msg = _error(p)
    assert "finetune.zzzzqqqq" in msg and "did you mean" not in msg


def test_unknown_nested_key_in_retrain(p):
    p["retrain"]["finetune"]["unfreeze_block"] = 2
    msg = _error(p)
    assert "retrain.finetune.unfreeze_block" in msg and "'unfreeze_blocks'" in msg


def test_feature_views_not_allowed_in_finetune(p):
    p["finetune"]["feature_views"] = 2
    assert "finetune.feature_views" in _error(p)


def _set(p: dict, path: tuple[str, ...], value) -> None:
    """Set the nested params key `path` to `value`."""
    node = p
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@pytest.mark.parametrize(
    "path, value, want",
    [
        (("train_head", "epochs"), "10", "int"),
        (("train_head", "epochs"), 2.5, "int"),
        (("finetune", "lr"), "0.001", "int or float"),
        (("seed",), True, "int"),  # bool is not an int here
        (("split", "by_group"), 1, "bool"),
        (("model", "input_size"), None, "int"),
        (("unknown", "classes"), 7, "list or str"),
    ],
)
def test_wrong_type_names_key_and_expected_type(p, path, value, want):
    _set(p, path, value)
    msg = _error(p)
    assert ".".join(path) in msg
    assert f"must be {want}" in msg


def test_int_accepted_where_float_expected(p):
    p["finetune"]["lr"] = 1
    p["split"].update(train=1, valid=0, test=0)
    P.validate(p)


def test_section_must_be_mapping(p):
    p["train_head"] = 5
    msg = _error(p)
    assert "train_head must be a mapping" in msg


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        (("finetune", "lr"), -0.001, "finetune.lr must be > 0"),
        (("train_head", "lr"), 0, "train_head.lr must be > 0"),
        (("train_head", "epochs"), 0, "train_head.epochs must be > 0"),
        (("seed",), -1, "seed must be >= 0"),
        (("finetune", "unfreeze_blocks"), -1, "finetune.unfreeze_blocks must be >= 0"),
        (("augment", "hflip"), 1.5, "augment.hflip must be between 0 and 1"),
        (("finetune", "momentum"), -0.1, "finetune.momentum must be between 0 and 1"),
        (("finetune", "optimizer"), "rmsprop", "finetune.optimizer must be one of adam, adamw, sgd"),
        (("model", "weights"), "imagenet21k", "model.weights must be one of"),
        (("device",), "tpu", "device must be one of"),
        (("cpu_isa",), "avx512f", "cpu_isa must be one of avx2, avx512, default"),
        (("train", "keep"), "val_f1", "train.keep must be one of val_acc, val_loss"),
        (("retrain", "finetune", "keep"), "loss", "retrain.finetune.keep must be one of val_acc, val_loss"),
    ],
)
def test_bad_values_name_the_key(p, path, value, fragment):
    _set(p, path, value)
    msg = _error(p)
    assert fragment in msg
    assert repr(value) in msg


def test_split_fractions_must_sum_to_one(p):
    p["split"].update(train=0.7, valid=0.1, test=0.1)
    msg = _error(p)
    assert "sum to 1" in msg and "0.9" in msg


def test_split_fractions_float_rounding_is_tolerated(p):
    p["split"].update(train=0.7, valid=0.2, test=0.1)  # 0.7 + 0.2 + 0.1 != 1.0 exactly in binary
    P.validate(p)


@pytest.mark.parametrize("path", [("model", "input_size"), ("seed",), ("retrain", "head", "epochs"), ("train", "lr"),
                                  ("tracking",)])
def test_missing_key_named(p, path):
    node = p
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    msg = _error(p)
    assert f"missing key {'.'.join(path)}" in msg


def test_known_classes_needs_two(p):
    p["data"]["known_classes"] = {0: "zero"}
    assert "data.known_classes" in _error(p)


def test_unknown_classes_string_must_be_rest(p):
    p["unknown"]["classes"] = "rest"
    P.validate(p)
    p["unknown"]["classes"] = "all"
    msg = _error(p)
    assert "unknown.classes" in msg and "'all'" in msg


def test_top_level_must_be_mapping():
    with pytest.raises(PipelineError, match="mapping at top level"):
        P.validate([1, 2])


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PipelineError) as info:
        P.load(missing)
    assert str(missing) in str(info.value)


def test_load_invalid_yaml_names_file_on_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1, 2\nmodel: {", encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        P.load(bad)
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(PipelineError):
        P.load(empty)


def test_load_modified_copy_reports_key(tmp_path, p):
    p["finetune"]["lrr"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p), encoding="utf-8")
    with pytest.raises(PipelineError, match=r"finetune\.lrr.*'lr'"):
        P.load(path)


def test_known_classes_as_strings_in_order():
    p = {"data": {"known_classes": {14: "stop", 1: "speed_30", "38": "keep_right"}}}
    assert P.known_classes(p, set()) == {"14": "stop", "1": "speed_30", "38": "keep_right"}
    assert list(P.known_classes(p, set())) == ["14", "1", "38"]


def test_known_classes_all_takes_every_label_not_claimed_by_unknown():
    p = {"data": {"known_classes": "all"}, "unknown": {"classes": [3], "holdout_classes": ["9"]}}
    labels = {"0", "1", "2", "3", "9", "10"}
    assert list(P.known_classes(p, labels)) == ["0", "1", "2", "10"]
    named = {"data": {"known_classes": "all"}, "unknown": {"classes": [], "holdout_classes": []}}
    assert list(P.known_classes(named, {"pizza", "sushi", "apple_pie"})) == ["apple_pie", "pizza", "sushi"]
    with pytest.raises(PipelineError, match="leaves 1 class"):
        P.known_classes(named, {"pizza"})
    rest = {"data": {"known_classes": "all"}, "unknown": {"classes": "rest", "holdout_classes": []}}
    with pytest.raises(PipelineError, match="needs unknown.classes as a list"):
        P.known_classes(rest, labels)


def test_known_classes_string_other_than_all_is_refused(p):
    p["data"]["known_classes"] = "everything"
    with pytest.raises(PipelineError, match="data.known_classes must be a mapping of label id -> name, or 'all'"):
        P.validate(p)


def test_flatten_dotted_keys_keeps_known_classes(p):
    flat = P.flatten(p)
    assert flat["train.lr"] == p["train"]["lr"]
    assert flat["retrain.head.epochs"] == p["retrain"]["head"]["epochs"]
    assert flat["seed"] == p["seed"]
    assert flat["data.known_classes"] == p["data"]["known_classes"]
    assert not any(k.startswith("data.known_classes.") for k in flat)
    assert all(not isinstance(v, dict) or k == "data.known_classes" for k, v in flat.items())


def test_unknown_key_in_a_phase_section_suggests_a_shared_key(p):
    p["retrain"]["head"]["weight_decai"] = 0.1
    msg = _error(p)
    assert "retrain.head.weight_decai" in msg and "did you mean 'weight_decay'" in msg


def test_a_phase_override_of_a_shared_key_is_validated(p):
    p["retrain"]["finetune"]["optimizer"] = "rmsprop"
    assert "retrain.finetune.optimizer must be one of adam, adamw, sgd" in _error(p)
    p["retrain"]["finetune"]["optimizer"] = "sgd"
    P.validate(p)


def test_phase_checks_see_the_resolved_phase(p):
    p["train"]["warmup_epochs"] = 4  # set once in train: too many for retrain.finetune's 3 epochs
    assert "retrain.finetune.warmup_epochs (4) must be below retrain.finetune.epochs (3)" in _error(p)
    p["retrain"]["finetune"]["warmup_epochs"] = 0  # a phase override wins
    p["finetune"]["warmup_epochs"] = 0
    P.validate(p)
