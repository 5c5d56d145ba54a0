"""The audit's files: CSV tables in reports/audit/ and the gallery of label-issue suspects."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..evaluation.plots import _pyplot, _save

COLUMNS = {
    "label_issues": ["path", "split", "given_label", "suggested_label", "score"],
    "near_duplicates": ["split_a", "path_a", "label_a", "split_b", "path_b", "label_b", "cosine"],
    "near_duplicate_counts": ["split_pair", "pairs", "images"],
    "outliers": ["path", "split", "label", "distance", "robust_z"],
    "class_balance": ["class", "train", "valid", "test", "total", "share"],
}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_tables(folder: Path, tables: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """One CSV per table (COLUMNS names them) in `folder`; returns the paths."""
    paths = []
    for name, rows in tables.items():
        write_csv(folder / f"{name}.csv", COLUMNS[name], rows)
        paths.append(folder / f"{name}.csv")
    return paths


def gallery(path: Path, images: list[np.ndarray], issues: list[dict[str, Any]], title: str) -> None:
    """A grid of the top suspects (uint8 HWC images), each titled given -> suggested label (quality score)."""
    plt = _pyplot()
    cols = max(1, min(6, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.1 * cols, 6.0), 2.5 * rows + 0.7), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not images:
        axes[0, 0].text(0.5, 0.5, "no label issues found", ha="center", va="center", fontsize=11)
    for ax, img, row in zip(axes.flat, images, issues):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{row['split']}: given {row['given_label']}\nsuggested {row['suggested_label']} "
                     f"({row['score']:.2f})", fontsize=8, color="darkred")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
