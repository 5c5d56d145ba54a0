"""Group k-fold cross-validation of the known-class model (split.folds > 0), on the train + valid rows.

Each fold holds out its groups and cuts the rest once more by group (data.folds.nested_fold_indices): a
validation part of valid's share in the split, and the training part. The fold trains as the pipeline does:
the train_head stage (ImageNet backbone per model.weights, frozen, new head; seeded) and then the finetune
stage (seeded again, from the head's best state), each keeping its best epoch on the validation part; the
held-out groups, which chose nothing, are then scored with evaluation.metrics.compute, beside the pixel
baseline (evaluate.baseline_size > 0: logistic regression on the fold's raw downscaled pixels, as evaluate
reports it). Per fold and mean/std/min/max of accuracy, macro-F1, loss and the baseline's accuracy: a
comparison over every train + valid image instead of one small test split. Every held-out image pooled
(`out_of_fold`): each model's share right with a 95% group-bootstrap interval over all train + valid groups.

With split.fold_retrain the K+1 model is cross-validated too: the unknown images of add_unknown_class's train
+ valid (other sign classes) get nested group folds of their own, fold i joins fold i of the known images, and
each fold's fine-tuned net is retrained as the retrain stage does (seeded, a new `unknown` head row, the
retrain.head then retrain.finetune phases, best epoch on the fold's validation part); its held-out known and
unknown groups then give the 5-class accuracy, the known images classified right, the unknown recall and the
AUROC of the unknown probability."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from .. import features as feature_cache
from .. import models, tracking
from ..atomic import write_json
from ..config.phases import Phase
from ..data import transforms
from ..data.folds import inner_folds, nested_fold_indices
from ..data.manifest import UNKNOWN, Row
from ..data.splitdir import Data, SplitDir
from ..errors import PipelineError
from ..evaluation import plots
from ..evaluation.baseline import pixel_baseline
from ..evaluation.metrics import compute
from ..evaluation.out_of_fold import Predictions, describe_pooled, group_of, write_errors
from ..evaluation.out_of_fold import describe as describe_errors
from ..evaluation.out_of_fold import pooled as pooled_scores
from ..inference import Preproc, predict_logits
from ..progress import say
from ..runtime import set_seed
from .loop import FitResult, fit
from .stage import preproc, run_phases

POOL = ("train", "valid")  # the splits folds are drawn from; test is never touched
HEADLINE = ("accuracy", "macro_f1", "loss")
RETRAINED = ("accuracy", "known_accuracy", "known_rejected", "unknown_recall", "unknown_auroc")  # K+1 per fold
Folds = list[tuple[list[int], list[int], list[int]]]  # (train, validation, held-out) indices per fold


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
               pp: Preproc, unknown: tuple[Data, Data, Data] | None = None
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One fold: trained on `train`, epochs chosen on `valid`, headline metrics on `held` (the held-out
    groups); the best epochs and the image counts. `unknown` (train, valid, held-out unknown images, targets
    len(classes)): the fold's net is then retrained with them (`retrain_fold`), its scores under "retrained".
    Also the held-out logits per model: "finetuned" (`held`'s rows), "retrained" (`held`'s, then the unknown's)."""
    net, head, tune = train_fold(params, f"fold {fold}", train, valid, classes, pp)
    logits = {"finetuned": predict_logits(net, held.images, pp)}
    m = compute(held.targets, logits["finetuned"], classes)
    size = int(params["evaluate"]["baseline_size"])
    base = pixel_baseline((train.images, train.targets.numpy()), (held.images, held.targets.numpy()),
                          np.zeros(0), len(classes), size, params["seed"], 0)["accuracy"] if size else None
    out = {**{k: m[k] for k in HEADLINE}, **({"baseline_accuracy": base} if size else {}),
           "head_best_epoch": head.best_epoch, "finetune_best_epoch": tune.best_epoch,
           "n_train": len(train.targets), "n_valid": len(valid.targets), "n_held_out": len(held.targets)}
    if unknown is not None:
        parts = [join(known, extra) for known, extra in zip((train, valid, held), unknown)]
        k1 = retrain_fold(params, f"fold {fold}", net, parts[0], parts[1], len(classes) + 1, pp)
        logits["retrained"] = predict_logits(k1, parts[2].images, pp)
        out["retrained"] = {**open_set_scores(parts[2].targets, logits["retrained"], len(classes)),
                            "n_unknown_train": len(unknown[0].targets), "n_unknown_held_out": len(unknown[2].targets)}
    return out, logits


def join(a: Data, b: Data) -> Data:
    """Images and targets of `a`, then `b` (no features: a fine-tuned net cannot use ImageNet's)."""
    return Data(torch.cat([a.images, b.images]), torch.cat([a.targets, b.targets]))


def retrain_fold(params: dict[str, Any], run: str, net: models.Net, train: Data, valid: Data, n_classes: int,
                 pp: Preproc) -> models.Net:
    """The retrain stage on one fold: seeded, `net` (the fold's fine-tuned model) with a head of `n_classes`
    (its known rows kept, `unknown` new), the retrain.head then retrain.finetune phases; the net ends in their
    best state."""
    set_seed(params["seed"], params["device"])
    models.replace_head(net, n_classes, keep_rows=n_classes - 1)
    net.dropout.p = float(params["model"]["head_dropout"])
    phases = [(f"{run} retrain.{name}", Phase.from_params(params, f"retrain.{name}")) for name in ("head", "finetune")]
    best, _ = run_phases(net, phases, train, valid, pp, params["augment"], None)
    net.load_state_dict(best.best_state)
    return net


def open_set_scores(targets: torch.Tensor, logits: torch.Tensor, unknown: int) -> dict[str, float]:
    """The K+1 model on known and unknown images (class `unknown` = the last): accuracy over all, the share
    of known images classified right and of those called unknown (`known_rejected`), the share of unknown
    images called unknown, and the AUROC of the unknown probability (unknown images against known ones)."""
    from sklearn.metrics import roc_auc_score

    t, pred = targets.numpy(), logits.argmax(1).numpy()
    is_unknown = t == unknown
    if is_unknown.all() or not is_unknown.any():
        raise PipelineError(f"crossval: a fold's held-out part needs known and unknown images "
                            f"({int(is_unknown.sum())} of {len(t)} unknown)")
    p_unknown = torch.softmax(logits.double(), 1)[:, unknown].numpy()
    return {"accuracy": round(float((pred == t).mean()), 6),
            "known_accuracy": round(float((pred == t)[~is_unknown].mean()), 6),
            "known_rejected": round(float((pred == unknown)[~is_unknown].mean()), 6),
            "unknown_recall": round(float((pred == unknown)[is_unknown].mean()), 6),
            "unknown_auroc": round(float(roc_auc_score(is_unknown, p_unknown)), 6)}


def spread(values: list[float]) -> dict[str, float]:
    """mean, std (population, ddof 0), min and max over folds."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 6), "std": round(float(a.std()), 6),
            "min": round(float(a.min()), 6), "max": round(float(a.max()), 6)}


def folds_of(params: dict[str, Any], split: SplitDir, unknown_only: bool = False) -> Folds:
    """The split's nested group folds over `pooled_rows` (split.folds of them; the epoch-choosing part takes
    valid's share of train + valid); too many folds for the groups fail here, before any work. `unknown_only`:
    over the split's unknown rows alone (indices into `unknown_rows`)."""
    rows = unknown_rows(split) if unknown_only else pooled_rows(split)
    n_valid = sum(r["label"] == UNKNOWN for r in split.rows("valid")) if unknown_only else len(split.rows("valid"))
    return nested_fold_indices(rows, int(params["split"]["folds"]), params["seed"], inner_folds(len(rows), n_valid))


def unknown_rows(split: SplitDir) -> list[Row]:
    """The `unknown` rows of `pooled_rows` (add_unknown_class's split), in that order."""
    return [r for r in pooled_rows(split) if r["label"] == UNKNOWN]


def unknown_data(split: SplitDir, classes: list[str], size: int) -> Data:
    """The unknown images of the split's train + valid (`unknown_rows` order), target len(classes): `classes`
    must be the split's classes but `unknown`, in its order (the known model's head rows are kept)."""
    if split.classes() != [*classes, UNKNOWN]:
        raise PipelineError(f"crossval: {split.path} holds classes {split.classes()}, expected {[*classes, UNKNOWN]}")
    parts = [split.images(s, size, [i for i, r in enumerate(split.rows(s)) if r["label"] == UNKNOWN]) for s in POOL]
    images = torch.cat(parts)
    return Data(images, torch.full((len(images),), len(classes), dtype=torch.long))


class CrossValidation(NamedTuple):
    metrics: dict[str, Any]  # per fold and spread (metrics/crossval.json)
    seconds: list[float]  # per fold
    predictions: list[Predictions]  # out of fold: "finetuned" over `data`, "retrained" over `data` then unknown


def cross_validate(params: dict[str, Any], folds: Folds, data: Data, classes: list[str], pp: Preproc,
                   unknown: tuple[Folds, Data] | None = None) -> CrossValidation:
    """Every fold (train, validation, held-out indices into `data`; see data.folds.nested_fold_indices):
    metrics, seconds and out-of-fold predictions. `unknown` (folds into unknown images, those images): fold
    i's net is also retrained with fold i of the unknown images (split.fold_retrain; see `score_fold`)."""
    per_fold: dict[str, dict[str, Any]] = {}
    seconds: list[float] = []
    preds = [Predictions.empty("finetuned", classes, data.targets.numpy())]
    if unknown:
        preds.append(Predictions.empty("retrained", [*classes, UNKNOWN],
                                       torch.cat([data.targets, unknown[1].targets]).numpy()))
    for i, (tr, va, held) in enumerate(folds):
        t0 = time.perf_counter()
        extra = tuple(subset(unknown[1], part) for part in unknown[0][i]) if unknown else None
        per_fold[f"fold{i}"], logits = score_fold(params, i, subset(data, tr), subset(data, va), subset(data, held),
                                                  classes, pp, extra)
        preds[0].put(np.asarray(held), i, torch.softmax(logits["finetuned"].double(), 1).numpy())
        if unknown:
            idx = np.concatenate([np.asarray(held), len(data.targets) + np.asarray(unknown[0][i][2], dtype=np.int64)])
            preds[1].put(idx, i, torch.softmax(logits["retrained"].double(), 1).numpy())
        seconds.append(time.perf_counter() - t0)
        f = per_fold[f"fold{i}"]
        base = f" (pixel baseline {f['baseline_accuracy']:.4f})" if "baseline_accuracy" in f else ""
        k1 = f.get("retrained")
        k1_text = (f"; retrained: accuracy {k1['accuracy']:.4f}, known right {k1['known_accuracy']:.4f} (called "
                   f"unknown {k1['known_rejected']:.4f}), unknown recall {k1['unknown_recall']:.4f}, AUROC "
                   f"{k1['unknown_auroc']:.4f}") if k1 else ""
        print(f"crossval fold {i}: accuracy {f['accuracy']:.4f}{base} macro_f1 {f['macro_f1']:.4f}{k1_text} "
              f"({seconds[-1]:.1f} s)", flush=True)
    out: dict[str, Any] = {"folds": len(folds), "per_fold": per_fold}
    for key in (*HEADLINE, "baseline_accuracy"):
        if all(key in f for f in per_fold.values()):
            out[key] = spread([f[key] for f in per_fold.values()])
    if unknown:
        out["retrained"] = {key: spread([f["retrained"][key] for f in per_fold.values()]) for key in RETRAINED}
    return CrossValidation(out, seconds, preds)


def describe(res: dict[str, Any]) -> str:
    """One line of the stage's result: means ± std of the headline metrics (and the K+1 model's)."""
    def ms(v: dict[str, float]) -> str:
        return f"{v['mean']:.4f} ± {v['std']:.4f}"
    text = f"crossval: {res['folds']} folds, accuracy {ms(res['accuracy'])}, macro_f1 {ms(res['macro_f1'])}"
    if "baseline_accuracy" in res:
        text += f", pixel baseline {ms(res['baseline_accuracy'])}"
    if "retrained" in res:
        k1 = res["retrained"]
        text += (f"; retrained: accuracy {ms(k1['accuracy'])}, known right {ms(k1['known_accuracy'])}, "
                 f"unknown recall {ms(k1['unknown_recall'])}, AUROC {ms(k1['unknown_auroc'])}")
    return text


def errors_gallery(path: Path, p: Predictions, rows: list[Row], images: list[torch.Tensor], limit: int) -> None:
    """The `limit` most confident out-of-fold errors of `p` (over `rows`, whose images are `images` one after
    the other), each captioned with its group, true and predicted class and probability: what to look at before
    choosing a lever."""
    wrong = p.wrong()
    order = wrong[:limit].tolist()
    ends = np.cumsum([len(x) for x in images])

    def image(i: int) -> torch.Tensor:
        part = int(np.searchsorted(ends, i, side="right"))
        return images[part][i - (ends[part - 1] if part else 0)]

    captions = [f"{group_of(rows[i])}\ntrue {p.classes[p.targets[i]]}\n"
                f"pred {p.classes[p.predicted[i]]} ({p.confidence[i]:.2f})" for i in order]
    shown = f", {len(order)} shown" if len(wrong) > len(order) else ""
    plots.gallery_png(path, torch.stack([image(i) for i in order]) if order else images[0][:0], captions,
                      f"{p.model} model, out of fold: {len(wrong)} of {int((p.fold >= 0).sum())} wrong{shown}",
                      "no out-of-fold errors")


def run_stage(params: dict[str, Any], split: SplitDir, out: Path, errors: Path, features: Path | None = None,
              unknown_split: SplitDir | None = None) -> dict[str, Any]:
    """The crossval stage with folds on: data, one MLflow run, every fold, metrics/crossval.json and the
    out-of-fold errors (`errors`, tlpipe.evaluation.out_of_fold), each announced in one line; each model's
    `errors_gallery` (evaluate.gallery_images of them) goes to the MLflow run. `features`: the split's ImageNet
    features (tlpipe.features), each fold's plain head view when they match; `unknown_split` (add_unknown_class's,
    with split.fold_retrain): retrain every fold too."""
    if params["augment"]["engine"] == "v2":
        transforms.build_v2(params["augment"]["v2"])  # a bad op fails here, before any work
    folds = folds_of(params, split)  # too many: fail now
    unknown_folds = folds_of(params, unknown_split, unknown_only=True) if unknown_split else None
    classes = split.classes()
    pp = preproc(params["model"], params["device"])
    with tracking.stage_run("crossval", params, params["tracking"]["experiment"]) as tracker:
        shared = feature_cache.load(features, params, split, POOL)
        unknown = (unknown_folds, unknown_data(unknown_split, classes, pp.size)) if unknown_split else None
        pooled_data = pooled(split, classes, pp.size, shared)
        res = cross_validate(params, folds, pooled_data, classes, pp, unknown)
        # each model's predictions with the rows and images they index: known, then (retrained) unknown
        sources = [(pooled_rows(split), [pooled_data.images])]
        if unknown:
            sources.append((sources[0][0] + unknown_rows(unknown_split), [pooled_data.images, unknown[1].images]))
        models = [(p, rows) for p, (rows, _) in zip(res.predictions, sources)]
        write_errors(errors, models)
        res.metrics["out_of_fold"] = {p.model: pooled_scores(p, rows, int(params["evaluate"]["bootstrap"]),
                                                             params["seed"]) for p, rows in models}
        write_json(out, res.metrics)
        tracker.metrics(res.metrics)
        tracker.metrics({f"fold{i}_seconds": s for i, s in enumerate(res.seconds)})
        tracker.artifact(out)
        tracker.artifact(errors)
        with tempfile.TemporaryDirectory() as tmp:
            for p, (rows, images) in zip(res.predictions, sources):
                png = Path(tmp) / f"crossval_errors_{p.model}.png"
                errors_gallery(png, p, rows, images, int(params["evaluate"]["gallery_images"]))
                tracker.artifact(png)
    say(f"{describe(res.metrics)} -> {out}")
    say(describe_pooled(res.metrics["out_of_fold"]))
    say(f"{describe_errors(models)} -> {errors}")
    return res.metrics
