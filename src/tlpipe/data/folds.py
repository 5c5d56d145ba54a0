"""Group k-fold over the train + valid rows of a split folder (never test): seeded, stratified by class
as far as whole groups allow, and no group in two folds (each group is in exactly one validation fold)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..errors import PipelineError
from .manifest import Row


def group_labels(rows: list[Row]) -> dict[str, str]:
    """Each group's class: the most common label among its rows (ties: the first label met)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["group"]][r["label"]] += 1
    return {g: c.most_common(1)[0][0] for g, c in counts.items()}


def _check(n_groups: int, k: int) -> None:
    if k < 2:
        raise PipelineError(f"params: split.folds={k}: cross-validation needs at least 2 folds (0 = off)")
    if k > n_groups:
        raise PipelineError(f"params: split.folds={k} exceeds the {n_groups} group(s) of train + valid "
                            f"(each fold needs at least one whole group; lower split.folds)")


def _ordered_groups(rows: list[Row], seed: int) -> list[tuple[str, str, int]]:
    """(label, group, size) per group: classes in sorted order, each class's groups shuffled (seeded),
    then the largest first (a stable sort, so equal sizes keep the shuffled order)."""
    sizes = Counter(r["group"] for r in rows)
    by_label: dict[str, list[str]] = defaultdict(list)
    for g, label in group_labels(rows).items():
        by_label[label].append(g)
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, int]] = []
    for label in sorted(by_label):
        names = sorted(by_label[label])
        shuffled = [names[i] for i in rng.permutation(len(names))]
        out.extend((label, g, sizes[g]) for g in sorted(shuffled, key=lambda g: -sizes[g]))
    return out


def assign_folds(rows: list[Row], k: int, seed: int) -> list[int]:
    """The validation fold (0..k-1) of each row. Each group goes, whole, to the fold holding the fewest
    images of its class so far (ties: fewest images in all, then the lower index), so classes stay
    balanced as far as groups allow and no fold is empty."""
    ordered = _ordered_groups(rows, seed)
    _check(len(ordered), k)
    per_class: dict[str, list[int]] = defaultdict(lambda: [0] * k)
    total = [0] * k
    fold_of: dict[str, int] = {}
    for label, group, size in ordered:
        f = min(range(k), key=lambda i: (per_class[label][i], total[i], i))
        fold_of[group] = f
        per_class[label][f] += size
        total[f] += size
    return [fold_of[r["group"]] for r in rows]


def fold_indices(rows: list[Row], k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Per fold, (train row indices, validation row indices) into `rows`, each in row order."""
    folds = assign_folds(rows, k, seed)
    return [([i for i, f in enumerate(folds) if f != j], [i for i, f in enumerate(folds) if f == j])
            for j in range(k)]


def group_kfold(rows: list[Row], k: int, seed: int) -> list[tuple[list[Row], list[Row]]]:
    """Per fold, (train rows, validation rows): the other folds' groups train, this fold's groups validate."""
    return [([rows[i] for i in tr], [rows[i] for i in va]) for tr, va in fold_indices(rows, k, seed)]
