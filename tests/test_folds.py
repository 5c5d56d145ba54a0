"""Group k-fold (data/folds.py) and the cross-validation of the known-class model (training/crossval.py)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from _support import REPO
from tlpipe.config import params as params_mod
from tlpipe.data.folds import assign_folds, fold_indices, group_kfold, inner_folds, nested_fold_indices
from tlpipe.data.splitdir import Data
from tlpipe.errors import PipelineError


def make_rows(n_groups: dict[str, int], seed: int = 0) -> list[dict[str, str]]:
    """Rows of several classes, groups of 1-4 images each (sizes vary by a fixed pattern)."""
    rows = []
    for label, n in n_groups.items():
        for g in range(n):
            for j in range(1 + (g * 7 + seed) % 4):
                rows.append({"path": f"{label}/{g}/{j}.png", "label": label, "group": f"{label}-g{g}"})
    return rows


ROWS = make_rows({"a": 12, "b": 9, "c": 15})


def groups_of(rows) -> set[str]:
    return {r["group"] for r in rows}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_group_in_two_folds_and_each_group_validates_once(k):
    folds = group_kfold(ROWS, k, seed=42)
    assert len(folds) == k
    seen: Counter[str] = Counter()
    for train, valid in folds:
        assert valid and train
        assert not groups_of(train) & groups_of(valid)
        assert len(train) + len(valid) == len(ROWS)
        seen.update(groups_of(valid))
    assert set(seen) == groups_of(ROWS) and set(seen.values()) == {1}


def test_rows_keep_their_order():
    for tr, va in fold_indices(ROWS, 3, seed=1):
        assert tr == sorted(tr) and va == sorted(va)
        assert sorted(tr + va) == list(range(len(ROWS)))


def test_deterministic_for_a_seed_and_seeds_differ():
    assert assign_folds(ROWS, 3, seed=7) == assign_folds(ROWS, 3, seed=7)
    assert group_kfold(ROWS, 3, seed=7) == group_kfold(ROWS, 3, seed=7)
    assert assign_folds(ROWS, 3, seed=7) != assign_folds(ROWS, 3, seed=8)


def test_class_balance_is_roughly_kept():
    rows = make_rows({"a": 30, "b": 20, "c": 10})
    total = Counter(r["label"] for r in rows)
    for _, valid in group_kfold(rows, 5, seed=3):
        got = Counter(r["label"] for r in valid)
        for label, n in total.items():
            assert abs(got[label] - n / 5) <= 4, (label, got[label], n / 5)  # within one group (<= 4 images)


def test_more_folds_than_groups_is_one_clear_error():
    rows = make_rows({"a": 2, "b": 2})
    with pytest.raises(PipelineError, match=r"split.folds=5 exceeds the 4 group\(s\)"):
        group_kfold(rows, 5, seed=0)
    with pytest.raises(PipelineError, match="at least 2 folds"):
        group_kfold(rows, 1, seed=0)


@pytest.mark.parametrize("k,inner", [(2, 2), (3, 4), (5, 9)])
def test_nested_folds_choose_epochs_on_groups_they_are_not_scored_on(k, inner):
    nested = nested_fold_indices(ROWS, k, 42, inner)
    assert [held for _, _, held in nested] == [va for _, va in fold_indices(ROWS, k, 42)]
    for train, valid, held in nested:
        parts = [{ROWS[i]["group"] for i in part} for part in (train, valid, held)]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(train + valid + held) == list(range(len(ROWS)))
        assert train == sorted(train) and valid == sorted(valid)
        # the validation part is one of `inner` group folds of the rest: about 1/inner of its groups
        n_rest = len(parts[0] | parts[1])
        assert len(parts[1]) == pytest.approx(n_rest / inner, abs=len({r["label"] for r in ROWS}))
    assert nested == nested_fold_indices(ROWS, k, 42, inner)
    assert nested != nested_fold_indices(ROWS, k, 43, inner)


def test_inner_folds_take_valids_share():
    assert inner_folds(5520, 630) == 9  # GTSRB's 4 signs: train + valid, valid
    assert inner_folds(975, 98) == 10
    assert inner_folds(10, 9) == 2 and inner_folds(10, 0) == 10


def test_nested_folds_need_two_groups_to_train_and_validate():
    rows = make_rows({"a": 1, "b": 1})
    with pytest.raises(PipelineError, match=r"split.folds=2: a fold's training part holds 1 group"):
        nested_fold_indices(rows, 2, 0, 9)


def test_params_reject_one_fold():
    p = params_mod.load(REPO / "params.yaml")
    assert p["split"]["folds"] == 0
    bad = copy.deepcopy(p)
    bad["split"]["folds"] = 1
    with pytest.raises(PipelineError, match="split.folds"):
        params_mod.validate(bad)


def tiny_params() -> dict:
    p = copy.deepcopy(params_mod.load(REPO / "params.yaml"))
    p["split"]["folds"] = 2
    p["model"].update(backbone="resnet18", weights="none", input_size=32, channels_last=False, inference_batch_size=16)
    p["train_head"].update(epochs=1, batch_size=8, feature_views=1)
    p["finetune"].update(epochs=1, batch_size=8, unfreeze_blocks=1, prefix_views=1)
    return p


def test_crossval_returns_per_fold_and_spread():
    from tlpipe.training.crossval import cross_validate
    from tlpipe.training.stage import preproc

    rows = make_rows({"red": 4, "blue": 4})
    g = torch.Generator().manual_seed(0)
    colour = torch.tensor([[220, 30, 30] if r["label"] == "red" else [30, 30, 220] for r in rows], dtype=torch.float32)
    images = (colour[:, :, None, None] + 25 * torch.randn(len(rows), 3, 32, 32, generator=g)).clamp(0, 255)
    data = Data(images.to(torch.uint8), torch.tensor([int(r["label"] == "blue") for r in rows]))
    p = tiny_params()
    res, seconds = cross_validate(p, nested_fold_indices(rows, 2, p["seed"], 2), data, ["red", "blue"],
                                  preproc(p["model"], "cpu"))
    assert res["folds"] == 2 and len(seconds) == 2 and sorted(res["per_fold"]) == ["fold0", "fold1"]
    for f in res["per_fold"].values():
        assert {"accuracy", "macro_f1", "loss", "head_best_epoch", "finetune_best_epoch"} <= set(f)
        assert 0 <= f["accuracy"] <= 1 and f["n_train"] + f["n_valid"] + f["n_held_out"] == len(rows)
    # the pixel baseline on the same folds: red against blue is colour alone, so pixels get it all right
    assert all(f["baseline_accuracy"] == 1.0 for f in res["per_fold"].values())
    assert res["baseline_accuracy"]["mean"] == 1.0
    for key in ("accuracy", "macro_f1", "loss"):
        vals = [f[key] for f in res["per_fold"].values()]
        assert res[key]["min"] == min(vals) and res[key]["max"] == max(vals)
        assert res[key]["mean"] == pytest.approx(sum(vals) / 2, abs=1e-6)


def test_pooled_is_train_then_valid_in_row_order_and_never_test(tmp_path):
    from PIL import Image

    from tlpipe.data import manifest
    from tlpipe.data.splitdir import SplitDir, write_classes
    from tlpipe.training.crossval import pooled, pooled_rows

    raw, folder = tmp_path / "raw", tmp_path / "split"
    raw.mkdir()
    folder.mkdir()
    for s, n, base in (("train", 4, 0), ("valid", 2, 100), ("test", 2, 200)):
        rows = [{"path": f"{s}{i}.png", "label": ["x", "y"][i % 2], "group": f"{s}{i}"} for i in range(n)]
        for i, r in enumerate(rows):
            Image.new("RGB", (8, 8), (base + 10 * i, 0, 0)).save(raw / r["path"])
        manifest.write(folder / f"{s}.csv", rows)
    write_classes(folder, ["x", "y"], ["0", "1"])
    split = SplitDir(folder, raw, None)
    rows, data = pooled_rows(split), pooled(split, ["x", "y"], 8)
    assert [r["path"] for r in rows] == ["train0.png", "train1.png", "train2.png", "train3.png", "valid0.png",
                                         "valid1.png"]
    assert data.images[:, 0, 4, 4].tolist() == [0, 10, 20, 30, 100, 110]
    assert data.targets.tolist() == [0, 1, 0, 1, 0, 1]
