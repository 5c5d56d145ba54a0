"""Out-of-fold predictions (crossval): every train + valid image predicted by the one fold that held it out.

Pooled over the folds they cover every group (track) of train + valid, not one test split's few: a mistake
that recurs in many images of a few groups (a sign under a lighting the training groups lack) shows here
before it shows on new data. `write_errors` lists each wrong image, most confident first (reports/
crossval_errors.csv); `describe` counts them by (actual, predicted) with the groups they come from;
`pooled` scores every held-out image at once with a group-bootstrap interval over all the groups: the share
of new tracks' images a model of this recipe gets right, and how sure that is (a fold's mean ± std says how
much the folds differ, not that). NumPy and SciPy only: the crossval stage writes the header-only file
without importing torch when folds are off."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..data.manifest import UNKNOWN, Row
from . import bootstrap

HEADER = ("model", "fold", "path", "group", "actual", "predicted", "confidence")
SHOWN = 4  # confusions named per model in `describe` (the CSV has them all)


@dataclass(frozen=True)
class Predictions:
    """One model's out-of-fold predictions over pooled rows with class-index `targets`: per row the fold that
    held it out (-1: none yet), the predicted class index and its softmax probability."""

    model: str
    classes: list[str]
    targets: np.ndarray
    fold: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray

    @classmethod
    def empty(cls, model: str, classes: list[str], targets: np.ndarray) -> Predictions:
        n = len(targets)
        return cls(model, list(classes), np.asarray(targets, dtype=np.int64), np.full(n, -1), np.full(n, -1),
                   np.full(n, np.nan))

    def put(self, index: np.ndarray, fold: int, probabilities: np.ndarray) -> None:
        """Fold `fold`'s softmax `probabilities` (len(index) x classes) for the rows at `index`."""
        if (self.fold[index] >= 0).any():
            raise ValueError(f"out_of_fold: a row of fold {fold} was already held out by another fold")
        self.fold[index] = fold
        self.predicted[index] = probabilities.argmax(1)
        self.confidence[index] = probabilities.max(1)

    def wrong(self) -> np.ndarray:
        """Indices of the held-out rows predicted wrong, most confident first (ties: row order)."""
        idx = np.flatnonzero((self.fold >= 0) & (self.predicted != self.targets))
        return idx[np.argsort(-self.confidence[idx], kind="stable")]


def group_of(row: Row) -> str:
    """A manifest row's group (a GTSRB track), or its path where it has none."""
    return row.get("group") or row["path"]


def write_errors(path: str | Path, models: list[tuple[Predictions, list[Row]]]) -> None:
    """One CSV row (HEADER) per out-of-fold error of each model, given with its rows (the manifest rows its
    targets follow); header only for no models."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for p, rows in models:
            for i in p.wrong():
                r = rows[i]
                w.writerow([p.model, int(p.fold[i]), r["path"], group_of(r),
                            p.classes[p.targets[i]], p.classes[p.predicted[i]], f"{p.confidence[i]:.4f}"])


def confusions(p: Predictions, rows: list[Row]) -> list[tuple[str, str, int, int]]:
    """(actual, predicted, images, groups) of every confusion among the held-out rows, most images first."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i in p.wrong():
        groups[p.classes[p.targets[i]], p.classes[p.predicted[i]]].append(group_of(rows[i]))
    out = [(a, b, len(g), len(set(g))) for (a, b), g in groups.items()]
    return sorted(out, key=lambda c: (-c[2], -c[3], c[0], c[1]))


def pooled(p: Predictions, rows: list[Row], resamples: int, seed: int) -> dict[str, float | int | None]:
    """Every held-out row of `p` scored at once, with 95% group-bootstrap intervals (`resamples` seeded
    resamples of the groups, the binomial floor of evaluate's; 0: no interval) and the images and groups they
    rest on. A model without an `unknown` class: its accuracy. With one (the last class): the known images
    classified right (`known_right`) and the unknown images called unknown (`unknown_recall`), each over its
    own images and groups."""
    held = p.fold >= 0
    right = p.predicted == p.targets
    groups = np.array([group_of(r) for r in rows])
    parts = {"accuracy": held}
    if p.classes[-1] == UNKNOWN:
        is_unknown = p.targets == len(p.classes) - 1
        parts = {"known_right": held & ~is_unknown, "unknown_recall": held & is_unknown}
    out: dict[str, float | int | None] = {}
    for name, mask in parts.items():
        interval = bootstrap.accuracy_interval(groups[mask], right[mask], resamples, seed) \
            if resamples and mask.any() else None
        out[name] = round(float(right[mask].mean()), 6) if mask.any() else None
        out[f"{name}_lo"], out[f"{name}_hi"] = (round(v, 6) for v in interval) if interval else (None, None)
        out[f"{name}_images"], out[f"{name}_groups"] = int(mask.sum()), len(set(groups[mask]))
    return out


def describe_pooled(scores: dict[str, dict[str, float | int | None]]) -> str:
    """One line: per model its pooled out-of-fold shares with their intervals and groups."""
    def one(s: dict[str, float | int | None], name: str) -> str:
        lo, hi = s[f"{name}_lo"], s[f"{name}_hi"]
        interval = bootstrap.bracket(None if lo is None or hi is None else (float(lo), float(hi)))
        return (f"{name.replace('_', ' ')} {s[name]:.4f}{interval} ({s[f'{name}_images']:,} images, "
                f"{s[f'{name}_groups']} groups)")
    parts = [f"{model} " + ", ".join(one(s, n) for n in ("accuracy", "known_right", "unknown_recall") if n in s)
             for model, s in scores.items()]
    return "crossval: every held-out image, 95% group-bootstrap intervals: " + "; ".join(parts)


def describe(models: list[tuple[Predictions, list[Row]]]) -> str:
    """One line: per model its errors among the held-out images, their groups and the commonest confusions."""
    parts = []
    for p, rows in models:
        held, wrong = int((p.fold >= 0).sum()), p.wrong()
        n_groups = len({group_of(rows[i]) for i in wrong})
        top = confusions(p, rows)
        named = ", ".join(f"{a}->{b} {n} ({g} group{'s' if g != 1 else ''})" for a, b, n, g in top[:SHOWN])
        more = f", {len(top) - SHOWN} more" if len(top) > SHOWN else ""
        parts.append(f"{p.model} {len(wrong)} of {held:,} in {n_groups} groups" + (f": {named}{more}" if top else ""))
    return "crossval: out-of-fold errors, " + "; ".join(parts)
