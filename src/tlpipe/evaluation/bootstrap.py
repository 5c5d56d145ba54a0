"""Seeded group bootstrap: percentile intervals of test metrics, resampling whole groups (GTSRB tracks).

The frames of one track are near copies: resampling images one by one would count 30 frames as 30
independent draws and give intervals far too narrow. Each resample draws as many groups as there are,
with replacement; a group drawn k times weighs k. Every statistic is a function of the (resamples,
groups) count matrix, so 1,000 resamples cost a few matrix products, not 1,000 metric calls.

A share of right answers (accuracy, a class's recall) gets the percentile interval widened to at least the
exact binomial (Clopper-Pearson) interval of its image counts (`proportion_interval`). The bootstrap
accounts for tracks but has zero width when nothing is wrong ([1, 1] for 630 of 630: it cannot bound an
error rate it never saw); the binomial interval treats images as independent, too narrow when errors
cluster in a track, but never of zero width. Neither can see a shift between the test tracks and new ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import PipelineError

Interval = tuple[float, float]
AUROC_CHUNK = 100  # resamples whose per-image weights are held at once (memory: chunk x images)


@dataclass(frozen=True)
class Resamples:
    """n resamples of the groups: counts[r, g] = how often resample r drew group g; codes[i] = image i's group."""

    counts: np.ndarray  # (resamples, groups) int
    codes: np.ndarray  # (images,) int

    def totals(self, per_image: np.ndarray) -> np.ndarray:
        """Per resample, the weighted sum of each column of `per_image` (images, k): (resamples, k)."""
        per_group = np.zeros((self.counts.shape[1], per_image.shape[1]))
        np.add.at(per_group, self.codes, per_image)
        return self.counts @ per_group

    def image_weights(self, rows: slice = slice(None)) -> np.ndarray:
        """(resamples, images) weights of the resamples `rows`: how often each image's group was drawn."""
        return self.counts[rows][:, self.codes].astype(np.float64)


Statistic = Callable[[Resamples], np.ndarray]  # one value per resample; NaN where undefined (skipped)


def resample_groups(groups: np.ndarray, n: int, seed: int) -> Resamples:
    """n seeded resamples of the distinct values of `groups` (one per image), with replacement."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise PipelineError(f"bootstrap: groups must be a non-empty 1-D array, got shape {groups.shape}")
    if n < 1:
        raise PipelineError(f"bootstrap: resamples must be >= 1, got {n}")
    names, codes = np.unique(groups, return_inverse=True)
    n_groups = len(names)
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n, n_groups))
    flat = (draws + np.arange(n)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n * n_groups).reshape(n, n_groups)
    return Resamples(counts, codes.ravel())


def percentile_interval(values: np.ndarray, level: float = 0.95) -> Interval | None:
    """The central `level` percentile interval of the finite values (None: none is finite)."""
    if not 0.0 < level < 1.0:
        raise PipelineError(f"bootstrap: level must be in (0, 1), got {level}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> Interval:
    """Exact binomial interval of k successes in n independent trials."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise PipelineError(f"bootstrap: {k} successes of {n} trials")
    tail = (1.0 - level) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def proportion_interval(bootstrapped: Interval | None, k: int, n: int, level: float = 0.95) -> Interval | None:
    """A share's interval: the group bootstrap's, widened to contain the binomial interval of k right of n
    (None when there is nothing to score)."""
    if n == 0:
        return bootstrapped
    low, high = clopper_pearson(k, n, level)
    return (low, high) if bootstrapped is None else (min(bootstrapped[0], low), max(bootstrapped[1], high))


def group_bootstrap(groups: np.ndarray, statistic: Statistic, n: int, seed: int,
                    level: float = 0.95) -> Interval | None:
    """Percentile interval of `statistic` over n seeded group resamples (None: undefined in every one)."""
    return percentile_interval(statistic(resample_groups(groups, n, seed)), level)


def accuracy_interval(groups: np.ndarray, correct: np.ndarray, n: int, seed: int,
                      level: float = 0.95) -> Interval | None:
    """Accuracy's interval on its own resamples: the group bootstrap's, with the binomial floor."""
    correct = np.asarray(correct, dtype=bool)
    return proportion_interval(group_bootstrap(groups, accuracy(correct), n, seed, level), int(correct.sum()),
                               len(correct), level)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def accuracy(correct: np.ndarray) -> Statistic:
    """Share of right predictions per resample; `correct` is one bool per image."""
    columns = np.stack([np.asarray(correct, dtype=np.float64), np.ones(len(correct))], axis=1)
    return lambda res: _ratio(*res.totals(columns).T)


def class_tallies(target: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(images, 3 * classes): one-hot true class, one-hot predicted class, one-hot true positive."""
    eye = np.eye(n_classes)
    truth, guess = eye[np.asarray(target)], eye[np.asarray(pred)]
    return np.concatenate([truth, guess, truth * guess], axis=1)


def per_class_recall(target: np.ndarray, pred: np.ndarray, n_classes: int) -> Callable[[Resamples], np.ndarray]:
    """(resamples, classes) recall; NaN where a resample holds no image of the class."""
    tallies = class_tallies(target, pred, n_classes)

    def recall(res: Resamples) -> np.ndarray:
        truth, _, hits = np.split(res.totals(tallies), 3, axis=1)
        return _ratio(hits, truth)
    return recall


def macro_f1(target: np.ndarray, pred: np.ndarray, n_classes: int) -> Statistic:
    """Macro-F1 per resample over the classes it holds (true or predicted), as scikit-learn's
    f1_score(average="macro") of the resampled images. A class absent from a resample (its few groups not
    drawn) does not count as an F1 of 0: that would put the interval's lower bound near 1 - 1/classes
    whenever a class has only a handful of groups (GTSRB's 3 stop tracks: 0.79 for a model with 9 errors)."""
    tallies = class_tallies(target, pred, n_classes)

    def f1(res: Resamples) -> np.ndarray:
        truth, guess, hits = np.split(res.totals(tallies), 3, axis=1)
        per_class = _ratio(2 * hits, truth + guess)  # NaN: class absent from the resample
        present = np.isfinite(per_class).sum(axis=1)
        return _ratio(np.nan_to_num(per_class).sum(axis=1), present)
    return f1


def weighted_auroc(weights: np.ndarray, is_known: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of `score` for known vs unknown under each row of `weights` (rows, images): the weighted
    Mann-Whitney statistic, ties counting half (= roc_auc_score with sample_weight). NaN: a side is empty."""
    order = np.argsort(score, kind="stable")
    ranked, known = np.asarray(score)[order], np.asarray(is_known, dtype=bool)[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # one bin per distinct score
    w = weights[:, order]
    known_w = np.add.reduceat(w * known, starts, axis=1)
    unknown_w = np.add.reduceat(w * ~known, starts, axis=1)
    below = np.cumsum(unknown_w, axis=1) - unknown_w
    wins = (known_w * (below + 0.5 * unknown_w)).sum(axis=1)
    return _ratio(wins, known_w.sum(axis=1) * unknown_w.sum(axis=1))


def auroc(is_known: np.ndarray, score: np.ndarray) -> Statistic:
    """Open-set AUROC (known = positive) per resample; resamples without known or unknown images are NaN."""
    def per_resample(res: Resamples) -> np.ndarray:
        n = len(res.counts)
        return np.concatenate([weighted_auroc(res.image_weights(slice(i, i + AUROC_CHUNK)), is_known, score)
                               for i in range(0, n, AUROC_CHUNK)])
    return per_resample


def closed_set_intervals(target: np.ndarray, pred: np.ndarray, groups: np.ndarray, n_classes: int, n: int,
                         seed: int, level: float = 0.95) -> dict[str, object]:
    """Accuracy, macro-F1 and per-class recall intervals over one shared set of group resamples (accuracy and
    recall widened to their binomial intervals, `proportion_interval`)."""
    target, pred = np.asarray(target), np.asarray(pred)
    res = resample_groups(groups, n, seed)
    recall = per_class_recall(target, pred, n_classes)(res)
    right = target == pred
    return {"accuracy": proportion_interval(percentile_interval(accuracy(right)(res), level), int(right.sum()),
                                            len(right), level),
            "macro_f1": percentile_interval(macro_f1(target, pred, n_classes)(res), level),
            "recall": [proportion_interval(percentile_interval(recall[:, c], level), int(right[target == c].sum()),
                                           int((target == c).sum()), level) for c in range(n_classes)]}


def bracket(interval: Sequence[float] | None) -> str:
    """' [low, high]' of an interval to the 4 decimals of the figure before it ('' without one): at 2 decimals
    0.9992 [0.9955, 1.0] read "0.9992 [1.00, 1.00]"."""
    return f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def groups_per_class(labels: Sequence[str] | np.ndarray, groups: Sequence[str] | np.ndarray) -> dict[str, int]:
    """Distinct groups of each label: the number of independent draws an interval really rests on."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape:
        raise PipelineError(f"bootstrap: {len(labels)} labels but {len(groups)} groups")
    return {str(label): int(len(np.unique(groups[labels == label]))) for label in np.unique(labels)}
