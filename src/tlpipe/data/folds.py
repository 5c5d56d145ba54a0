"""Group k-fold over the train + valid rows of a split folder (never test): seeded, stratified by class
as far as whole groups allow, and no group in two folds (each group is in exactly one validation fold).
`nested_fold_indices` splits each fold's training part once more, so that the epoch a fold keeps is chosen
on groups other than the ones it is scored on."""

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


def inner_folds(n_pool: int, n_valid: int) -> int:
    """How many group folds a fold's training part is cut into so that one of them, the epoch-choosing
    validation, takes the share valid takes of train + valid in the split (GTSRB 5,520 / 630: 9; at least 2)."""
    return max(2, round(n_pool / max(n_valid, 1)))


def nested_fold_indices(rows: list[Row], k: int, seed: int, inner: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Per fold, (train, validation, held-out) row indices into `rows`, each in row order. Held-out is
    `fold_indices`' validation fold; the other folds' groups are cut again into `inner` group folds (same
    seed, capped at their number of groups), the first of which validates (picks the best epoch, as valid
    does in the pipeline) and the rest train. So a fold's score comes from groups that chose nothing."""
    out = []
    for rest, held in fold_indices(rows, k, seed):
        sub = [rows[i] for i in rest]
        n_groups = len({r["group"] for r in sub})
        if n_groups < 2:
            raise PipelineError(f"params: split.folds={k}: a fold's training part holds {n_groups} group(s); it "
                                f"needs 2, one of them to choose the epoch (lower split.folds)")
        inner_of = assign_folds(sub, min(inner, n_groups), seed)
        out.append(([i for i, f in zip(rest, inner_of) if f != 0], [i for i, f in zip(rest, inner_of) if f == 0], held))
    return out
