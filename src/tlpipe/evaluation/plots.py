"""Figures and DVC plot data: confusion matrix, per-class scores, ROC, curves, galleries, reliability.

matplotlib is imported by the figure functions only, so that importing this module costs nothing."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from .calibration import bins, ece


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    """Write a figure atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)


def write_confusion_csv(path: str | Path, targets: torch.Tensor, logits: torch.Tensor, names: Sequence[str]) -> None:
    """One row per image (actual,predicted): the data DVC's confusion template expects."""
    pred = logits.argmax(1).tolist()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["actual", "predicted"])
        for t, p in zip(targets.tolist(), pred):
            w.writerow([names[t], names[p]])


def write_per_class_csv(path: str | Path, per_class: dict[str, dict[str, Any]]) -> None:
    """One row per class (class,precision,recall,f1,support), for DVC's bar_horizontal template."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for name, m in per_class.items():
            w.writerow([name, f"{m['precision']:.6f}", f"{m['recall']:.6f}", f"{m['f1-score']:.6f}", int(m["support"])])


def confusion_png(path: str | Path, targets: torch.Tensor, logits: torch.Tensor, names: Sequence[str], title: str) -> None:
    """Confusion matrix with the count written in every cell, rows normalised for colour."""
    plt = _pyplot()
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), labels=list(range(len(names))))
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    fig.tight_layout()
    _save(fig, path)


def write_history_csv(path: str | Path, history: list[dict[str, float]]) -> None:
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for rec in history:
            w.writerow([int(rec["epoch"])] + [f"{rec[c]:.6g}" for c in cols[1:]])


def curves_png(path: str | Path, history: list[dict[str, float]], title: str, best_epoch: int) -> None:
    """Loss and accuracy per epoch, train and validation, the kept epoch marked."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, label in ((a, "loss", "loss"), (b, "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train", markersize=3)
        ax.plot(ep, [h[f"val_{key}"] for h in history], "s-", label="validation", markersize=3)
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def write_roc_csv(path: str | Path, is_known: np.ndarray, score: np.ndarray) -> None:
    """ROC points (fpr, tpr) of a known-vs-unknown score, for DVC's linear plot template (header only when
    the test split has no unknown images: there is no curve to draw)."""
    from sklearn.metrics import roc_curve

    both = bool(np.any(is_known) and not np.all(is_known))
    fpr, tpr, _ = roc_curve(is_known, score) if both else ([], [], None)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["fpr", "tpr"])
        for a, b in zip(fpr, tpr):
            w.writerow([f"{a:.6f}", f"{b:.6f}"])


def ranked_errors(targets: torch.Tensor, logits: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(indices of the wrong images, most confident first; predicted class and its softmax probability per
    image): the order of the misclassified gallery and of reports/<model>/errors.csv."""
    conf, pred = logits.softmax(1).max(1)
    wrong = torch.nonzero(pred != targets).flatten()
    return wrong[torch.argsort(conf[wrong], descending=True, stable=True)].tolist(), pred, conf


def misclassified_png(path: str | Path, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                      names: Sequence[str], title: str, limit: int, groups: Sequence[str] | None = None) -> int:
    """A grid of up to `limit` misclassified images (uint8 NCHW), each titled [its group,] true -> predicted
    (probability), most confident mistakes first. Returns how many images were wrong in total."""
    wrong, pred, conf = ranked_errors(targets, logits)
    order = wrong[:limit]
    captions = [("" if groups is None else f"{groups[i]}\n") +
                f"true {names[int(targets[i])]}\npred {names[int(pred[i])]} ({float(conf[i]):.2f})" for i in order]
    shown = f", {len(order)} shown" if len(wrong) > len(order) else ""
    gallery_png(path, images[order] if order else images[:0], captions,
                f"{title}: {len(wrong)} of {len(targets)} wrong{shown}", "no misclassified\ntest images")
    return int(len(wrong))


def gallery_png(path: str | Path, images: torch.Tensor, captions: Sequence[str], title: str, empty: str) -> None:
    """A grid of images (uint8 NCHW, up to 6 a row), each above its caption; `empty` written when there are none."""
    plt = _pyplot()
    cols = max(1, min(6, len(images)))
    rows = max(1, -(-len(images) // cols))
    lines = max([c.count("\n") + 1 for c in captions], default=2)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, (2.0 + 0.2 * lines) * rows + 0.5), dpi=110,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(images):
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=11)
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(caption, fontsize=8, color="darkred")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def reliability_png(path: str | Path, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                    title: str, n_bins: int = 15) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for t, label, marker in ((1.0, "raw", "o"), (temperature, f"T = {temperature:.2f}", "s")):
        probs = torch.softmax(logits / t, 1)
        pts = [(c, a) for c, a, n in bins(probs, targets, n_bins) if n]
        xs, ys = zip(*pts) if pts else ((), ())
        ax.plot(xs, ys, marker=marker, label=f"{label} (ECE {100 * ece(probs, targets, n_bins):.2f}%)")
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def write_rows_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """A CSV of dict rows, columns in the first row's order."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def lr_find_png(path: str | Path, sweeps: dict[str, tuple[list[float], list[float], float, str]], rule: str) -> None:
    """Smoothed loss against the learning rate (log scale), one panel per phase, each suggestion marked with
    the rule that gave it."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), dpi=110, squeeze=False)
    for ax, (name, (lrs, smoothed, suggestion, by)) in zip(axes[0], sweeps.items()):
        ax.plot(lrs, smoothed, "-", linewidth=1.5)
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1,
                   label=f"suggestion {suggestion:.2g} ({by})")
        finite = [s for s in smoothed if np.isfinite(s)]
        if finite:  # from the lowest loss to the highest before it: the blow-up at the end would flatten the rest
            low = min(finite)
            ax.set_ylim(low * 0.95, max(1.1 * max(finite[: finite.index(low) + 1]), 2 * low))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("lr_find: " + textwrap.fill(rule, 150), fontsize=9)
    fig.tight_layout()
    _save(fig, path)
