"""The evaluate stage's body: closed-set metrics and reports, calibration, open-set recognition, figures.

The test split of data/split_unknown holds the known classes' test images, unknown images of the
classes retrain saw, and images of held-out classes nobody trained on. A model without an
`unknown` class is measured on the known images (closed set) and rejects by a score threshold
chosen on validation; a model with one is measured on known + seen-unknown images and rejects by
predicting `unknown`. Both are scored on known-vs-unknown separation in one table."""

from __future__ import annotations

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
from ..runtime import set_seed
from . import metrics as closed, openset, plots
from .calibration import ece


@dataclass
class Scored:
    """A split of the known+unknown manifests, scored by one model."""

    logits: torch.Tensor
    target: torch.Tensor  # index in the model's classes, -1 where the label is not one of them
    kind: np.ndarray  # 'known', 'seen' (unknown class trained on) or 'unseen' (held-out class)


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
    return Scored(predict_logits(net, split.images(name, pp.size), pp), target, kind)


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


def measure(test: Scored, valid: Scored, classes: list[str], t: float) -> dict[str, Any]:
    """The metrics file: closed-set metrics, calibration before and after scaling, the open-set report."""
    keep = closed_set(test, classes)
    logits, target = test.logits[keep], test.target[keep]
    result = closed.compute(target, logits, classes)
    result["calibration"] = {"temperature": round(t, 6), "ece": round(ece(logits.softmax(1), target), 6),
                             "ece_scaled": round(ece((logits / t).softmax(1), target), 6)}
    result["open_set"] = open_set_report(test, valid, classes, t)
    return result


def write_outputs(out: Outputs, test: Scored, keep: np.ndarray, images: torch.Tensor, classes: list[str], t: float,
                  result: dict[str, Any], gallery: int) -> list[Path]:
    """Reports, plot data and figures of one evaluated model; returns the files to log to MLflow."""
    logits, target = test.logits[keep], test.target[keep]
    with atomic_dir(out.report_dir) as tmp:  # the folder is one DVC output: complete or absent
        write_text(tmp / "classification_report.txt", closed.report_text(target, logits, classes))
        write_json(tmp / "classification_report.json", closed.report_dict(target, logits, classes))
    plots.write_confusion_csv(out.plot("confusion", "csv"), target, logits, classes)
    plots.write_per_class_csv(out.plot("per_class", "csv"), result["per_class"])
    plots.confusion_png(out.plot("confusion", "png"), target, logits, classes,
                        f"{out.name} model, test split (n={len(target)})")
    plots.misclassified_png(out.plot("misclassified", "png"), images[torch.from_numpy(keep)], target, logits, classes,
                            f"{out.name} model, misclassified test images", gallery)
    plots.reliability_png(out.plot("reliability", "png"), logits, target, t, f"{out.name} model: reliability on test")
    primary = result["open_set"]["primary_score"]
    plots.write_roc_csv(out.plot("roc", "csv"), test.kind == "known",
                        openset.scores(test.logits, t, unknown_index(classes))[primary].numpy())
    write_json(out.metrics_file, result)
    return [out.metrics_file, out.report_dir / "classification_report.txt",
            out.report_dir / "classification_report.json", out.plot("confusion", "png"),
            out.plot("reliability", "png"), out.plot("misclassified", "png")]


def summary_line(name: str, result: dict[str, Any], t: float) -> str:
    """The line the stage prints."""
    cal, os_ = result["calibration"], result["open_set"]
    primary = os_["primary_score"]
    return (f"evaluate {name}: test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
            f"ECE {cal['ece']:.4f} -> {cal['ece_scaled']:.4f} (T={t:.2f}), {primary} AUROC "
            f"{os_['scores'][primary]['auroc']}, unseen-unknown recall {(os_.get('unseen') or {}).get('unknown_recall')}")


def evaluate(model: Path, split: SplitDir, out: Outputs, params: dict[str, Any]) -> dict[str, Any]:
    """The whole stage for one checkpoint: score test and valid, measure, write, log to one MLflow run."""
    set_seed(params["seed"], params["device"])
    holdout = set(split.info().get("holdout_ids", []))
    with tracking.stage_run(f"evaluate_{out.name}", params, params["tracking"]["experiment"]) as tracker:
        net, meta = checkpoint.restore(model)
        classes, t = meta["classes"], float(meta.get("temperature", 1.0))
        pp = preproc_from_meta(meta, params["device"], params["model"]["channels_last"], params["evaluate"]["batch_size"])
        net.to(pp.device)
        test, valid = (score_split(net, split, s, classes, holdout, pp) for s in ("test", "valid"))
        result = measure(test, valid, classes, t)
        keep = closed_set(test, classes)
        files = write_outputs(out, test, keep, split.images("test", pp.size), classes, t, result,
                              params["evaluate"]["gallery_images"])
        tracker.metrics({k: v for k, v in result.items() if k != "per_class"}, prefix="test_")
        tracker.metrics(result["per_class"], prefix="test_")
        for f in files:
            tracker.artifact(f)
    print(f"{summary_line(out.name, result, t)} -> {out.metrics_file}, {out.report_dir}/, {out.plots}/")
    return result
