"""Group k-fold (data/folds.py) and the cross-validation of the known-class model (training/crossval.py)."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
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
    res, seconds, _ = cross_validate(p, nested_fold_indices(rows, 2, p["seed"], 2), data, ["red", "blue"],
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


def test_open_set_scores_count_known_right_unknown_caught_and_rank_the_unknown_probability():
    from tlpipe.training.crossval import open_set_scores

    targets = torch.tensor([0, 1, 1, 2, 2, 2])  # class 2 = unknown
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [0, 0, 5.0], [0, 0, 4.0], [5.0, 0, 1.0]])
    s = open_set_scores(targets, logits, unknown=2)
    assert s["accuracy"] == round(4 / 6, 6)
    assert s["known_accuracy"] == round(2 / 3, 6)  # the second `1` was called unknown
    assert s["known_rejected"] == round(1 / 3, 6)
    assert s["unknown_recall"] == round(2 / 3, 6)  # the last unknown was called 0
    # unknown probabilities: known 0.0067, 0.0067, 0.987; unknown 0.987 (a tie: half), 0.965, 0.018: 6.5 of 9 pairs
    assert s["unknown_auroc"] == round(6.5 / 9, 6)
    with pytest.raises(PipelineError, match="known and unknown images"):
        open_set_scores(targets[:3], logits[:3], unknown=2)


def test_crossval_retrains_each_fold_with_unknown_images_of_its_own_groups():
    """split.fold_retrain: fold i's net is retrained with fold i of the unknown images; held-out scores of
    the K+1 model per fold and their spread; the known-class scores are those of a run without it."""
    from tlpipe.data.manifest import UNKNOWN
    from tlpipe.training.crossval import cross_validate
    from tlpipe.training.stage import preproc

    rows = make_rows({"red": 4, "blue": 4})
    urows = [{"path": f"u/{g}/{j}.png", "label": UNKNOWN, "group": f"u-g{g}"} for g in range(6) for j in range(2)]
    g = torch.Generator().manual_seed(0)

    def images(colours):
        c = torch.tensor(colours, dtype=torch.float32)
        return (c[:, :, None, None] + 25 * torch.randn(len(c), 3, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)

    data = Data(images([[220, 30, 30] if r["label"] == "red" else [30, 30, 220] for r in rows]),
                torch.tensor([int(r["label"] == "blue") for r in rows]))
    unknown = Data(images([[30, 220, 30]] * len(urows)), torch.full((len(urows),), 2))
    p = tiny_params()
    p["retrain"]["head"].update(epochs=2, feature_views=1)
    p["retrain"]["finetune"].update(epochs=1, batch_size=8, unfreeze_blocks=1, prefix_views=1)
    folds, ufolds = nested_fold_indices(rows, 2, p["seed"], 2), nested_fold_indices(urows, 2, p["seed"], 2)
    pp = preproc(p["model"], "cpu")
    plain = cross_validate(p, folds, data, ["red", "blue"], pp).metrics
    res, _, preds = cross_validate(p, folds, data, ["red", "blue"], pp, (ufolds, unknown))
    for i, (name, f) in enumerate(res["per_fold"].items()):
        assert {k: v for k, v in f.items() if k != "retrained"} == plain["per_fold"][name]
        k1 = f["retrained"]
        assert k1["n_unknown_held_out"] == len(ufolds[i][2]) and k1["n_unknown_train"] == len(ufolds[i][0])
        n_known, n_unknown = f["n_held_out"], k1["n_unknown_held_out"]
        assert k1["accuracy"] == pytest.approx(
            (k1["known_accuracy"] * n_known + k1["unknown_recall"] * n_unknown) / (n_known + n_unknown), abs=1e-5)
        assert 0 <= k1["unknown_auroc"] <= 1
    for key in ("accuracy", "known_accuracy", "known_rejected", "unknown_recall", "unknown_auroc"):
        vals = [f["retrained"][key] for f in res["per_fold"].values()]
        assert res["retrained"][key]["mean"] == pytest.approx(sum(vals) / 2, abs=1e-6)
    # out-of-fold predictions: every known (and, retrained, unknown) image once, by the fold that held it out,
    # agreeing with that fold's scores
    known, k1 = preds
    assert (known.model, k1.model) == ("finetuned", "retrained") and k1.classes == ["red", "blue", UNKNOWN]
    assert k1.targets.tolist() == data.targets.tolist() + [2] * len(urows)
    for i, (_, _, held) in enumerate(folds):
        assert sorted(np.flatnonzero(known.fold == i).tolist()) == held
        assert sorted(np.flatnonzero(k1.fold == i).tolist()) == held + [len(rows) + j for j in ufolds[i][2]]
        f = res["per_fold"][f"fold{i}"]
        assert (known.predicted[held] == known.targets[held]).mean() == pytest.approx(f["accuracy"], abs=1e-6)
        mine = k1.fold == i
        assert (k1.predicted[mine] == k1.targets[mine]).mean() == pytest.approx(f["retrained"]["accuracy"], abs=1e-6)
    assert ((known.confidence >= 0.5) & (known.confidence <= 1)).all()  # two classes: the argmax's probability


def test_crossval_stage_with_fold_retrain_writes_the_k1_scores(tmp_path):
    """The stage on a small digits run: split.folds 2 and split.fold_retrain give per-fold and mean K+1
    scores in metrics/crossval.json and every out-of-fold error in reports/crossval_errors.csv; with
    add_unknown_class not run, one error naming the missing file."""
    import csv
    import json

    import _datafix as D

    repo = D.stage_repo(tmp_path / "repo", {
        "data.max_per_class": 30, "unknown.train_images": 60, "unknown.valid_images": 20, "model.input_size": 32,
        "split.folds": 2, "split.fold_retrain": True, "train_head.epochs": 2, "finetune.epochs": 1,
        "retrain.head.epochs": 2, "retrain.finetune.epochs": 1, "evaluate.baseline_size": 0})
    for name in ("download", "split"):
        assert D.run_stage(repo, name).returncode == 0
    missing = D.run_stage(repo, "crossval")
    assert missing.returncode != 0 and "split_unknown" in missing.stderr and "Traceback" not in missing.stderr
    assert not (repo / "metrics/crossval.json").exists()
    assert D.run_stage(repo, "add_unknown_class").returncode == 0
    proc = D.run_stage(repo, "crossval")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((repo / "metrics/crossval.json").read_text())
    assert set(res["retrained"]) == {"accuracy", "known_accuracy", "known_rejected", "unknown_recall",
                                     "unknown_auroc"}
    for f in res["per_fold"].values():
        assert f["retrained"]["n_unknown_held_out"] > 0 and f["retrained"]["n_unknown_train"] > 0
    assert "retrained: accuracy" in proc.stdout + proc.stderr
    # each out-of-fold error names a row of the split it came from (known: data/split, unknown: split_unknown)
    errors = list(csv.DictReader(open(repo / "reports/crossval_errors.csv")))
    known = {r["path"]: r for s in ("train", "valid") for r in csv.DictReader(open(repo / f"data/split/{s}.csv"))}
    unknown = {r["path"]: r for s in ("train", "valid")
               for r in csv.DictReader(open(repo / f"data/split_unknown/{s}.csv")) if r["label"] == "unknown"}
    for e in errors:
        row = (known if e["model"] == "finetuned" or e["actual"] != "unknown" else unknown)[e["path"]]
        assert e["actual"] == row["label"] != e["predicted"] and e["group"] == row["group"]
    n_wrong = {m: sum(e["model"] == m for e in errors) for m in ("finetuned", "retrained")}
    n_held = sum(f["n_held_out"] for f in res["per_fold"].values())
    acc = sum(f["accuracy"] * f["n_held_out"] for f in res["per_fold"].values()) / n_held
    assert n_wrong["finetuned"] == round((1 - acc) * n_held)
    assert f"out-of-fold errors, finetuned {n_wrong['finetuned']} of {n_held}" in proc.stdout
    # every held-out image pooled: the same errors, an interval around the share, all train + valid groups
    oof = res["out_of_fold"]
    assert oof["finetuned"]["accuracy"] == round(1 - n_wrong["finetuned"] / n_held, 6)
    assert oof["finetuned"]["accuracy_lo"] <= oof["finetuned"]["accuracy"] <= oof["finetuned"]["accuracy_hi"]
    assert oof["finetuned"]["accuracy_groups"] == len({r["group"] for r in known.values()})
    k1 = oof["retrained"]
    assert k1["known_right_images"] == n_held and k1["unknown_recall_images"] == len(unknown)
    assert k1["unknown_recall_lo"] <= k1["unknown_recall"] <= k1["unknown_recall_hi"]
    assert "crossval: every held-out image, 95% group-bootstrap intervals: finetuned accuracy" in proc.stdout


def test_errors_gallery_draws_the_most_confident_errors_from_known_and_unknown_images(tmp_path, monkeypatch):
    """Each drawn image is the one its row names (known images first, then the unknown ones), captioned with
    its group, true and predicted class; a real PNG is written."""
    from PIL import Image

    from tlpipe.evaluation import plots
    from tlpipe.evaluation.out_of_fold import Predictions
    from tlpipe.training.crossval import errors_gallery

    known = torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 3, 8, 8) * 10  # image i: value 10 i
    unknown = 100 + torch.arange(3, dtype=torch.uint8)[:, None, None, None].expand(3, 3, 8, 8) * 10
    rows = [{"path": f"k{i}.png", "group": f"k{i // 2}"} for i in range(4)] + [{"path": f"u{i}.png"} for i in range(3)]
    p = Predictions.empty("retrained", ["a", "b", "unknown"], np.array([0, 0, 1, 1, 2, 2, 2]))
    p.put(np.arange(7), 0, np.array([[.9, .1, 0], [.2, .7, .1], [0, 1, 0], [.1, .1, .8], [.6, .2, .2],
                                     [0, 0, 1], [0, .95, .05]]))
    drawn = {}
    monkeypatch.setattr(plots, "gallery_png", lambda path, images, captions, title, empty: drawn.update(
        images=images, captions=captions, title=title))
    errors_gallery(tmp_path / "g.png", p, rows, [known, unknown], limit=3)
    # errors: row 6 (0.95), row 3 (0.8), row 1 (0.7), row 4 (0.6): the first three
    assert drawn["images"][:, 0, 0, 0].tolist() == [120, 30, 10]
    assert drawn["captions"] == ["u2.png\ntrue unknown\npred b (0.95)", "k1\ntrue b\npred unknown (0.80)",
                                 "k0\ntrue a\npred b (0.70)"]
    assert drawn["title"] == "retrained model, out of fold: 4 of 7 wrong, 3 shown"
    monkeypatch.undo()
    errors_gallery(tmp_path / "g.png", p, rows, [known, unknown], limit=3)
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.width > 300
