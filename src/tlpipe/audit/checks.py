"""The audit's measurements on features (numpy in, numpy out; no torch): label issues from out-of-fold
probabilities of a linear head (scored by cleanlab), near-duplicate pairs across splits, per-class outliers."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from ..data.folds import fold_indices
from ..data.manifest import Row


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _head(seed: int) -> Any:
    """The linear head: L2-normalised features, multinomial logistic regression. Measured on digits with 5% of
    the labels flipped (5 folds): C=10 gave 96% out-of-fold accuracy and cleanlab 87% recall at 87% precision,
    against 76%/75% for standardised features at C=0.01 and 91%/33% through a 64-d PCA."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), LogisticRegression(C=10.0, max_iter=1000, random_state=seed))


def out_of_fold_probs(feats: np.ndarray, labels: np.ndarray, rows: list[Row], n_classes: int, k: int,
                      seed: int) -> np.ndarray:
    """(N, C) class probabilities, each row's from a linear head trained on the other folds of a seeded group
    k-fold (data.folds: no group in two folds, so a near copy in the same group cannot vouch for a label).
    k is capped at the number of groups; a fold whose training part holds one class predicts it."""
    probs = np.zeros((len(labels), n_classes))
    k = min(k, len({r["group"] for r in rows}))
    for tr, va in fold_indices(rows, k, seed):
        present = np.unique(labels[tr])
        if len(present) < 2:
            probs[np.ix_(va, present)] = 1.0
            continue
        head = _head(seed).fit(feats[tr], labels[tr])
        probs[np.ix_(va, head.classes_)] = head.predict_proba(feats[va])
    return probs


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of likely label errors, most suspicious first; every row's label quality score in [0, 1])."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scores = get_label_quality_scores(labels, probs)
    issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    return np.asarray(issues, dtype=np.int64), scores


def near_duplicates(feats: dict[str, np.ndarray], threshold: float,
                    block: int = 1024) -> list[tuple[str, int, str, int, float]]:
    """(split a, row in a, split b, row in b, cosine) of every pair in two different splits whose unit
    features have cosine similarity >= threshold, most similar first (splits in the order given)."""
    pairs: list[tuple[str, int, str, int, float]] = []
    for a, b in combinations(feats, 2):
        fa, fb = unit(feats[a]), unit(feats[b])
        for i in range(0, len(fa), block):
            sim = fa[i : i + block] @ fb.T
            r, c = np.nonzero(sim >= threshold)
            pairs.extend((a, int(i + x), b, int(y), float(sim[x, y])) for x, y in zip(r, c))
    return sorted(pairs, key=lambda p: -p[4])


def outliers(feats: np.ndarray, labels: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: cosine distance of each unit feature to its class's mean direction and its robust z-score
    ((d - median) / (1.4826 MAD) within the class). Returns (distance, z-score, indices with z-score > z,
    farthest first)."""
    f = unit(feats)
    dist, score = np.zeros(len(f)), np.zeros(len(f))
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        centre = unit(f[idx].mean(0, keepdims=True))[0]
        d = 1.0 - f[idx] @ centre
        mad = 1.4826 * np.median(np.abs(d - np.median(d)))
        dist[idx], score[idx] = d, (d - np.median(d)) / max(mad, 1e-6)
    flagged = np.nonzero(score > z)[0]
    return dist, score, flagged[np.argsort(-score[flagged], kind="stable")]


def class_balance(labels_by_split: dict[str, list[str]], classes: list[str]) -> list[dict[str, Any]]:
    """Per class: images in each split, the total and its share of all images."""
    total = sum(len(v) for v in labels_by_split.values()) or 1
    out = []
    for c in classes:
        row: dict[str, Any] = {"class": c, **{s: v.count(c) for s, v in labels_by_split.items()}}
        row["total"] = sum(row[s] for s in labels_by_split)
        row["share"] = round(row["total"] / total, 6)
        out.append(row)
    return out
