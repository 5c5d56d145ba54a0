"""Group k-fold cross-validation of the known-class model (split.folds > 0), on the train + valid rows.

Each fold holds out its groups and cuts the rest once more by group (data.folds.nested_fold_indices): a
validation part of valid's share in the split, and the training part. The fold trains as the pipeline does:
the train_head stage (ImageNet backbone per model.weights, frozen, new head; seeded) and then the finetune
stage (seeded again, from the head's best state), each keeping its best epoch on the validation part; the
held-out groups, which chose nothing, are then scored with evaluation.metrics.compute, beside the pixel
baseline (evaluate.baseline_size > 0: logistic regression on the fold's raw downscaled pixels, as evaluate
reports it). Per fold and mean/std/min/max of accuracy, macro-F1, loss and the baseline's accuracy: a
comparison over every train + valid image instead of one small test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import features as feature_cache
from .. import models, tracking
from ..atomic import write_json
from ..config.phases import Phase
from ..data import transforms
from ..data.folds import inner_folds, nested_fold_indices
from ..data.manifest import Row
from ..data.splitdir import Data, SplitDir
from ..evaluation.baseline import pixel_baseline
from ..evaluation.metrics import compute
from ..inference import Preproc, predict_logits
from ..runtime import set_seed
from .loop import FitResult, fit
from .stage import preproc

POOL = ("train", "valid")  # the splits folds are drawn from; test is never touched
HEADLINE = ("accuracy", "macro_f1", "loss")


def pooled_rows(split: SplitDir) -> list[Row]:
    """train + valid manifest rows, train first: the order of `pooled`'s images."""
    return [r for s in POOL for r in split.rows(s)]


def pooled(split: SplitDir, classes: list[str], size: int, shared: dict[str, Any] | None = None) -> Data:
    """train + valid decoded images (from the split's cache) and targets, in `pooled_rows` order; with their
    plain ImageNet features when `shared` (tlpipe.features.load of POOL) holds them."""
    parts = [split.data(s, classes, size) for s in POOL]
    feats = torch.cat([shared[s] for s in POOL]) if shared else None
    return Data(torch.cat([p.images for p in parts]), torch.cat([p.targets for p in parts]), feats)


def subset(data: Data, idx: list[int]) -> Data:
    index = torch.tensor(idx, dtype=torch.long)
    return Data(data.images[index], data.targets[index], None if data.features is None else data.features[index])


def _hook(run: str, phase: str) -> Callable[[dict[str, float]], None]:
    def hook(rec: dict[str, float]) -> None:
        print(f"[{run} {phase}] epoch {int(rec['epoch'])}: train_loss {rec['train_loss']:.4f} "
              f"val_loss {rec['val_loss']:.4f} val_acc {rec['val_acc']:.4f}", flush=True)
    return hook


def _new_net(params: dict[str, Any], n_classes: int, pretrained: bool) -> models.Net:
    """Seeded as a stage starts, then built (random init draws from the seeded generator)."""
    set_seed(params["seed"], params["device"])
    net = models.build(params["model"]["backbone"], n_classes, pretrained)
    net.dropout.p = float(params["model"]["head_dropout"])
    return net


def train_fold(params: dict[str, Any], run: str, train: Data, valid: Data, classes: list[str],
               pp: Preproc) -> tuple[models.Net, FitResult, FitResult]:
    """train_head then finetune on one fold, as their stages do; the net ends in finetune's best state.
    `run` names it in the epoch log lines ("fold 2": "[fold 2 head] epoch 1: ...")."""
    augment = params["augment"]
    net = _new_net(params, len(classes), params["model"]["weights"] == "imagenet")
    head = fit(net, train, valid, Phase.from_params(params, "train_head"), pp, augment, _hook(run, "head"))
    net = _new_net(params, len(classes), False)  # finetune restores the head checkpoint into a fresh net
    net.load_state_dict(head.best_state)
    tune = fit(net, train, valid, Phase.from_params(params, "finetune"), pp, augment, _hook(run, "finetune"))
    net.load_state_dict(tune.best_state)
    return net, head, tune


def score_fold(params: dict[str, Any], fold: int, train: Data, valid: Data, held: Data, classes: list[str],
               pp: Preproc) -> dict[str, Any]:
    """One fold: trained on `train`, epochs chosen on `valid`, headline metrics on `held` (the held-out
    groups); the best epochs and the image counts."""
    net, head, tune = train_fold(params, f"fold {fold}", train, valid, classes, pp)
    m = compute(held.targets, predict_logits(net, held.images, pp), classes)
    size = int(params["evaluate"]["baseline_size"])
    base = pixel_baseline((train.images, train.targets.numpy()), (held.images, held.targets.numpy()),
                          np.zeros(0), len(classes), size, params["seed"], 0)["accuracy"] if size else None
    return {**{k: m[k] for k in HEADLINE}, **({"baseline_accuracy": base} if size else {}),
            "head_best_epoch": head.best_epoch, "finetune_best_epoch": tune.best_epoch,
            "n_train": len(train.targets), "n_valid": len(valid.targets), "n_held_out": len(held.targets)}


def spread(values: list[float]) -> dict[str, float]:
    """mean, std (population, ddof 0), min and max over folds."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 6), "std": round(float(a.std()), 6),
            "min": round(float(a.min()), 6), "max": round(float(a.max()), 6)}


def folds_of(params: dict[str, Any], split: SplitDir) -> list[tuple[list[int], list[int], list[int]]]:
    """The split's nested group folds over `pooled_rows` (split.folds of them; the epoch-choosing part takes
    valid's share of train + valid); too many folds for the groups fail here, before any work."""
    rows = pooled_rows(split)
    return nested_fold_indices(rows, int(params["split"]["folds"]), params["seed"],
                               inner_folds(len(rows), len(split.rows("valid"))))


def cross_validate(params: dict[str, Any], folds: list[tuple[list[int], list[int], list[int]]], data: Data,
                   classes: list[str], pp: Preproc) -> tuple[dict[str, Any], list[float]]:
    """Every fold (train, validation, held-out indices into `data`; see data.folds.nested_fold_indices):
    (metrics, seconds per fold)."""
    per_fold: dict[str, dict[str, Any]] = {}
    seconds: list[float] = []
    for i, (tr, va, held) in enumerate(folds):
        t0 = time.perf_counter()
        per_fold[f"fold{i}"] = score_fold(params, i, subset(data, tr), subset(data, va), subset(data, held),
                                          classes, pp)
        seconds.append(time.perf_counter() - t0)
        f = per_fold[f"fold{i}"]
        base = f" (pixel baseline {f['baseline_accuracy']:.4f})" if "baseline_accuracy" in f else ""
        print(f"crossval fold {i}: accuracy {f['accuracy']:.4f}{base} macro_f1 {f['macro_f1']:.4f} "
              f"({seconds[-1]:.1f} s)", flush=True)
    out: dict[str, Any] = {"folds": len(folds), "per_fold": per_fold}
    for key in (*HEADLINE, "baseline_accuracy"):
        if all(key in f for f in per_fold.values()):
            out[key] = spread([f[key] for f in per_fold.values()])
    return out, seconds


def run_stage(params: dict[str, Any], split: SplitDir, out: Path, features: Path | None = None) -> dict[str, Any]:
    """The crossval stage with folds on: data, one MLflow run, every fold, metrics/crossval.json. `features`:
    the split's ImageNet features (tlpipe.features), each fold's plain head view when they match."""
    if params["augment"]["engine"] == "v2":
        transforms.build_v2(params["augment"]["v2"])  # a bad op fails here, before any work
    folds = folds_of(params, split)  # too many: fail now
    classes = split.classes()
    pp = preproc(params["model"], params["device"])
    with tracking.stage_run("crossval", params, params["tracking"]["experiment"]) as tracker:
        shared = feature_cache.load(features, params, split, POOL)
        values, seconds = cross_validate(params, folds, pooled(split, classes, pp.size, shared), classes, pp)
        write_json(out, values)
        tracker.metrics(values)
        tracker.metrics({f"fold{i}_seconds": s for i, s in enumerate(seconds)})
        tracker.artifact(out)
    return values
