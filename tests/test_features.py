"""The audit's feature folder is what train_head would compute itself, and is taken only when it fits: the same
trained head from shared features as from features computed in place; another size, other weights or a changed
manifest make the stage compute them again."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import _datafix as D
from tlpipe import features, models
from tlpipe.config.params import load
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import SplitDir
from tlpipe.inference import preproc_from_params, run_groups
from tlpipe.runtime import set_seed
from tlpipe.training.loop import fit


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    repo = D.stage_repo(tmp_path_factory.mktemp("features") / "repo",
                        {"data.max_per_class": 30, "model.input_size": 32, "train_head.epochs": 3})
    for name in ("download", "split"):
        proc = D.run_stage(repo, name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    params = load(repo / "params.yaml")
    split = SplitDir(repo / "data/split", repo / "data/raw")
    features.compute(split, params, repo / "data/features")
    return repo, params, split


def test_shared_features_equal_the_ones_the_head_phase_computes(digits):
    repo, params, split = digits
    shared = features.load(repo / "data/features", params, split, ("train", "valid"))
    prep = preproc_from_params(params["model"], "cpu")
    net = models.build(params["model"]["backbone"], 2, pretrained=True)
    with torch.no_grad():
        own = {s: run_groups(net, split.images(s, prep.size), prep, None) for s in ("train", "valid")}
    assert set(shared) == {"train", "valid"}
    for s in own:
        assert shared[s].dtype == torch.float32 and torch.equal(shared[s], own[s]), s


def _trained_head(params, split, shared):
    set_seed(params["seed"], "cpu")
    classes, prep = split.classes(), preproc_from_params(params["model"], "cpu")
    train, valid = split.data("train", classes, prep.size), split.data("valid", classes, prep.size)
    train.features, valid.features = shared.get("train"), shared.get("valid")
    net = models.build(params["model"]["backbone"], len(classes), pretrained=True)
    res = fit(net, train, valid, Phase.from_params(params, "train_head"), prep, params["augment"])
    return res


def test_a_head_from_shared_features_is_the_head_from_its_own(digits):
    repo, params, split = digits
    shared = features.load(repo / "data/features", params, split, ("train", "valid"))
    a, b = _trained_head(params, split, shared), _trained_head(params, split, {})
    assert a.best_epoch == b.best_epoch and a.best_val_acc == b.best_val_acc
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in b.best_state)


def test_features_for_other_settings_are_not_taken(digits, tmp_path, capsys):
    repo, params, split = digits
    folder = repo / "data/features"
    other_size = {**params, "model": {**params["model"], "input_size": 48}}
    assert features.load(folder, other_size, split, ("train",)) == {}
    assert "computed for other input_size" in capsys.readouterr().out
    random_init = {**params, "model": {**params["model"], "weights": "none"}}
    assert features.load(folder, random_init, split, ("train",)) == {}
    assert features.load(tmp_path / "absent", params, split, ("train",)) == {}
    assert "not found" in capsys.readouterr().out
    moved = tmp_path / "split"  # the same classes, one training row fewer
    moved.mkdir()
    for f in split.path.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    lines = (moved / "train.csv").read_text().splitlines(keepends=True)
    (moved / "train.csv").write_text("".join(lines[:-1]))
    assert features.load(folder, params, dataclasses.replace(split, path=moved), ("train",)) == {}
    assert "computed for other manifests" in capsys.readouterr().out


def test_crossval_folds_from_shared_features_score_as_from_their_own(digits):
    from tlpipe.training.crossval import POOL, cross_validate, folds_of, pooled

    repo, params, split = digits
    params = {**params, "finetune": {**params["finetune"], "epochs": 1}}
    classes, prep = split.classes(), preproc_from_params(params["model"], "cpu")
    shared = features.load(repo / "data/features", params, split, POOL)
    folds = folds_of({**params, "split": {**params["split"], "folds": 2}}, split)
    with_shared = pooled(split, classes, prep.size, shared)
    assert with_shared.features is not None and len(with_shared.features) == len(with_shared.targets)
    a = cross_validate(params, folds, with_shared, classes, prep).metrics
    b = cross_validate(params, folds, pooled(split, classes, prep.size), classes, prep).metrics
    # features computed in other batches round differently in the last float bit: the loss may move by 1e-6
    for fold in a["per_fold"]:
        fa, fb = a["per_fold"][fold], b["per_fold"][fold]
        assert {k: v for k, v in fa.items() if k != "loss"} == {k: v for k, v in fb.items() if k != "loss"}
        assert fa["loss"] == pytest.approx(fb["loss"], abs=1e-5)
