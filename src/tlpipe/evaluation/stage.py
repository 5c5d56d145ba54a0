"""The evaluate stage's body: closed-set metrics and reports, calibration, open-set recognition, figures.

The test split of data/split_unknown holds the known classes' test images, unknown images of the
classes retrain saw, and images of held-out classes nobody trained on. A model without an
`unknown` class is measured on the known images (closed set) and rejects by a score threshold
chosen on validation; a model with one is measured on known + seen-unknown images and rejects by
predicting `unknown`. Both are scored on known-vs-unknown separation in one table."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint, tracking
from ..atomic import atomic_dir, write_json, write_text
from ..data import manifest
from ..data.splitdir import SplitDir
from ..inference import Preproc, predict_logits, preproc_from_meta
from ..models import Net
from ..progress import say
from ..runtime import set_seed
from . import bootstrap, metrics as closed, openset, plots, robustness_stage
from .baseline import pixel_baseline
from .calibration import ece


@dataclass
class Scored:
    """A split of the known+unknown manifests, scored by one model."""

    logits: torch.Tensor
    target: torch.Tensor  # index in the model's classes, -1 where the label is not one of them
    kind: np.ndarray  # 'known', 'seen' (unknown class trained on) or 'unseen' (held-out class)
    group: np.ndarray  # the manifest's group (a GTSRB track): the unit the bootstrap resamples
    path: np.ndarray  # the manifest's path (reports/<model>/errors.csv names each wrong image by it)


@dataclass(frozen=True)
class Outputs:
    """Where evaluate writes for the model `name`."""

    name: str
    metrics: Path = Path("metrics")
    reports: Path = Path("reports")
    plots: Path = Path("plots")

    @property
    def metrics_file(self) -> Path:
        return self.metrics / f"evaluate_{self.name}.json"

    @property
    def report_dir(self) -> Path:
        return self.reports / self.name

    def plot(self, kind: str, ext: str) -> Path:
        return self.plots / f"{kind}_{self.name}.{ext}"


def unknown_index(classes: list[str]) -> int | None:
    """Index of the `unknown` class in a model's classes (None: the model has none)."""
    return classes.index(manifest.UNKNOWN) if manifest.UNKNOWN in classes else None


def score_split(net: Net, split: SplitDir, name: str, model_classes: list[str], holdout: set[str],
                pp: Preproc) -> Scored:
    """Logits of every image of one split, with targets in the model's classes and each image's kind."""
    rows = split.rows(name)
    index = {c: i for i, c in enumerate(model_classes)}
    kind = np.array(["known" if r["label"] != manifest.UNKNOWN else ("unseen" if r.get("origin") in holdout else "seen")
                     for r in rows])
    target = torch.tensor([index.get(r["label"], -1) for r in rows], dtype=torch.long)
    group, path = np.array([r["group"] for r in rows]), np.array([r["path"] for r in rows])
    return Scored(predict_logits(net, split.images(name, pp.size), pp), target, kind, group, path)


def open_set_report(test: Scored, valid: Scored, classes: list[str], t: float) -> dict[str, Any]:
    """Threshold rejection (no unknown class) or the unknown class itself, against known/unknown images."""
    unk = unknown_index(classes)
    as_dict = lambda s: {"logits": s.logits, "is_known": s.kind == "known", "target": s.target.numpy()}  # noqa: E731
    table = openset.table(as_dict(test), as_dict(valid), unk, t)
    primary = "unknown_class" if unk is not None else "msp"
    score = openset.scores(test.logits, t, unk)[primary].numpy()
    accepted = score >= table[primary]["threshold"]
    if unk is not None:
        accepted = test.logits.argmax(1).numpy() != unk
    detail = openset.breakdown(test.logits.argmax(1).numpy(), test.target.numpy(), accepted, test.kind)
    return {"scores": table, "primary_score": primary, **detail}


def closed_set(test: Scored, classes: list[str]) -> np.ndarray:
    """Rows the model's own classes cover: known images, plus seen unknowns for a model with `unknown`."""
    keep = test.kind == "known"
    if manifest.UNKNOWN in classes:
        keep |= test.kind == "seen"
    return keep


def _rounded(interval: tuple[float, float] | None) -> list[float] | None:
    return [round(v, 6) for v in interval] if interval else None


def intervals(test: Scored, keep: np.ndarray, classes: list[str], t: float, primary: str, seed: int,
              resamples: int) -> dict[str, Any]:
    """95% group-bootstrap intervals of accuracy, macro-F1, per-class recall (closed-set rows) and of the
    primary open-set score's AUROC (all test rows; None without unknowns)."""
    target, pred = test.target.numpy()[keep], test.logits.argmax(1).numpy()[keep]
    closed_iv = bootstrap.closed_set_intervals(target, pred, test.group[keep], len(classes), resamples, seed)
    is_known = test.kind == "known"
    auroc = None
    if is_known.any() and (~is_known).any():
        score = openset.scores(test.logits, t, unknown_index(classes))[primary].numpy().astype(np.float64)
        auroc = bootstrap.group_bootstrap(test.group, bootstrap.auroc(is_known, score), resamples, seed)
    return {"level": 0.95, "resamples": resamples, "unit": "group",
            "accuracy": _rounded(closed_iv["accuracy"]), "macro_f1": _rounded(closed_iv["macro_f1"]),
            "recall": {c: _rounded(iv) for c, iv in zip(classes, closed_iv["recall"])}, "auroc": _rounded(auroc)}


def measure(test: Scored, valid: Scored, classes: list[str], t: float, seed: int = 0,
            resamples: int = 0) -> dict[str, Any]:
    """The metrics file: closed-set metrics, calibration before and after scaling, the open-set report,
    group-bootstrap intervals (resamples > 0) and the groups each class's numbers rest on."""
    keep = closed_set(test, classes)
    logits, target = test.logits[keep], test.target[keep]
    result = closed.compute(target, logits, classes)
    result["calibration"] = {"temperature": round(t, 6), "ece": round(ece(logits.softmax(1), target), 6),
                             "ece_scaled": round(ece((logits / t).softmax(1), target), 6)}
    result["open_set"] = open_set_report(test, valid, classes, t)
    if resamples:
        result["intervals"] = intervals(test, keep, classes, t, result["open_set"]["primary_score"], seed, resamples)
    per_class = bootstrap.groups_per_class(np.array(classes)[target.numpy()], test.group[keep]) if keep.any() else {}
    result["groups_per_class"] = {c: per_class.get(c, 0) for c in classes}
    return result


def baseline_report(split: SplitDir, test: Scored, keep: np.ndarray, test_images: torch.Tensor,
                    classes: list[str], size: int, seed: int, resamples: int) -> dict[str, Any]:
    """The raw-pixel baseline, trained on the split's train rows whose label is a model class, scored on
    the model's closed-set test rows (same images, same group resamples)."""
    index = {c: i for i, c in enumerate(classes)}
    train_target = np.array([index.get(r["label"], -1) for r in split.rows("train")], dtype=np.int64)
    usable = train_target >= 0
    train_images = split.images("train", test_images.shape[-1], np.flatnonzero(usable).tolist())
    return pixel_baseline((train_images, train_target[usable]),
                          (test_images[torch.from_numpy(keep)], test.target.numpy()[keep]),
                          test.group[keep], len(classes), size, seed, resamples)


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """metrics/evaluate_<name>.json: the few numbers people compare (`dvc metrics show/diff`, `dvc exp show`);
    the whole `result` goes to reports/<name>/metrics.json and MLflow."""
    os_, interval = result["open_set"], (result.get("intervals") or {}).get("accuracy") or [None, None]
    base = result.get("baseline")
    return {"accuracy": result["accuracy"], "accuracy_lo": interval[0], "accuracy_hi": interval[1],
            "macro_f1": result["macro_f1"], "loss": result["loss"], "ece_scaled": result["calibration"]["ece_scaled"],
            "auroc": os_["scores"][os_["primary_score"]]["auroc"],
            "unknown_recall_seen": (os_.get("seen") or {}).get("unknown_recall"),
            "unknown_recall_unseen": (os_.get("unseen") or {}).get("unknown_recall"),
            "baseline_accuracy": base["accuracy"] if base else None}


def for_mlflow(value: Any) -> Any:
    """The metrics dict as MLflow metrics: an interval [low, high] becomes {"low": .., "high": ..}."""
    if isinstance(value, dict):
        return {k: for_mlflow(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return {"low": value[0], "high": value[1]}
    return value


def write_errors_csv(path: Path, paths: np.ndarray, groups: np.ndarray, target: torch.Tensor, logits: torch.Tensor,
                     classes: list[str]) -> None:
    """One row per misclassified closed-set image (those `accuracy` counts): path, group, actual, predicted,
    confidence; most confident first."""
    order, pred, conf = plots.ranked_errors(target, logits)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "group", "actual", "predicted", "confidence"])
        for i in order:
            w.writerow([paths[i], groups[i], classes[int(target[i])], classes[int(pred[i])], f"{float(conf[i]):.4f}"])


def write_outputs(out: Outputs, test: Scored, keep: np.ndarray, images: torch.Tensor, classes: list[str], t: float,
                  result: dict[str, Any], gallery: int) -> list[Path]:
    """Reports, plot data and figures of one evaluated model; returns the files to log to MLflow."""
    logits, target = test.logits[keep], test.target[keep]
    with atomic_dir(out.report_dir) as tmp:  # the folder is one DVC output: complete or absent
        write_text(tmp / "classification_report.txt", closed.report_text(target, logits, classes))
        write_json(tmp / "classification_report.json", closed.report_dict(target, logits, classes))
        write_json(tmp / "metrics.json", result)  # every number; metrics/evaluate_<name>.json holds the headline
        write_errors_csv(tmp / "errors.csv", test.path[keep], test.group[keep], target, logits, classes)
    plots.write_confusion_csv(out.plot("confusion", "csv"), target, logits, classes)
    plots.write_per_class_csv(out.plot("per_class", "csv"), result["per_class"])
    plots.confusion_png(out.plot("confusion", "png"), target, logits, classes,
                        f"{out.name} model, test split (n={len(target)})")
    plots.misclassified_png(out.plot("misclassified", "png"), images[torch.from_numpy(keep)], target, logits, classes,
                            f"{out.name} model, misclassified test images", gallery, test.group[keep])
    plots.reliability_png(out.plot("reliability", "png"), logits, target, t, f"{out.name} model: reliability on test")
    primary = result["open_set"]["primary_score"]
    plots.write_roc_csv(out.plot("roc", "csv"), test.kind == "known",
                        openset.scores(test.logits, t, unknown_index(classes))[primary].numpy())
    write_json(out.metrics_file, headline(result))
    return [out.metrics_file, out.report_dir / "metrics.json", out.report_dir / "classification_report.txt",
            out.report_dir / "classification_report.json", out.report_dir / "errors.csv", out.plot("confusion", "png"),
            out.plot("reliability", "png"), out.plot("misclassified", "png")]


def summary_line(name: str, result: dict[str, Any], t: float) -> str:
    """The line the stage prints."""
    cal, os_ = result["calibration"], result["open_set"]
    primary = os_["primary_score"]
    base, bracket = result.get("baseline"), bootstrap.bracket
    return (f"evaluate {name}: test accuracy {result['accuracy']:.4f}"
            f"{bracket((result.get('intervals') or {}).get('accuracy'))}, macro-F1 {result['macro_f1']:.4f}, "
            f"ECE {cal['ece']:.4f} -> {cal['ece_scaled']:.4f} (T={t:.2f}), {primary} AUROC "
            f"{os_['scores'][primary]['auroc']}, unseen-unknown recall {(os_.get('unseen') or {}).get('unknown_recall')}"
            + (f", pixel baseline {base['accuracy']:.4f}{bracket(base['accuracy_interval'])}" if base else ""))


def evaluate(model: Path, split: SplitDir, out: Outputs, params: dict[str, Any]) -> dict[str, Any]:
    """The whole stage for one checkpoint: score test and valid, measure, write, log to one MLflow run; then
    the robustness report on the same closed-set test rows, in its own MLflow run (robustness_stage)."""
    set_seed(params["seed"], params["device"])
    holdout = set(split.info().get("holdout_ids", []))
    with tracking.stage_run(f"evaluate_{out.name}", params, params["tracking"]["experiment"]) as tracker:
        net, meta = checkpoint.restore(model)
        classes, t = meta["classes"], float(meta.get("temperature", 1.0))
        pp = preproc_from_meta(meta, params["device"], params["model"]["channels_last"], params["evaluate"]["batch_size"])
        net.to(pp.device)
        test, valid = (score_split(net, split, s, classes, holdout, pp) for s in ("test", "valid"))
        seed, resamples = params["seed"], params["evaluate"]["bootstrap"]
        result = measure(test, valid, classes, t, seed, resamples)
        keep, test_images = closed_set(test, classes), split.images("test", pp.size)
        if params["evaluate"]["baseline_size"]:
            result["baseline"] = baseline_report(split, test, keep, test_images, classes,
                                                 params["evaluate"]["baseline_size"], seed, resamples)
        files = write_outputs(out, test, keep, test_images, classes, t, result, params["evaluate"]["gallery_images"])
        tracker.metrics(for_mlflow({k: v for k, v in result.items() if k != "per_class"}), prefix="test_")
        tracker.metrics(result["per_class"], prefix="test_")
        for f in files:
            tracker.artifact(f)
    say(f"{summary_line(out.name, result, t)} -> {out.metrics_file}, {out.report_dir}/, {out.plots}/")
    rows = torch.from_numpy(keep)
    robustness_stage.run(net, pp, test_images[rows], test.target[rows], test.logits[rows], out.name, classes,
                         params)
    return result
