"""Open-set recognition: known-vs-unknown scores, AUROC, FPR at 95% TPR, rejection at a validation threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve


def scores(logits: torch.Tensor, temperature: float, unknown_index: int | None) -> dict[str, torch.Tensor]:
    """Higher = more likely known. Without an unknown class: max softmax and energy (logsumexp);
    with one: 1 - p(unknown)."""
    z = logits / temperature
    if unknown_index is None:
        return {"msp": torch.softmax(z, 1).max(1).values, "energy": torch.logsumexp(z, 1)}
    return {"unknown_class": 1.0 - torch.softmax(z, 1)[:, unknown_index]}


def fpr_at_tpr(is_known: np.ndarray, score: np.ndarray, tpr: float = 0.95) -> float:
    """Share of unknown images accepted when the threshold accepts `tpr` of known images."""
    fpr, tprs, _ = roc_curve(is_known, score)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def threshold_for_tpr(known_scores: np.ndarray, tpr: float = 0.95) -> float:
    """The score above which `tpr` of the (validation) known images lie."""
    ranked = np.sort(np.asarray(known_scores, dtype=np.float64))[::-1]
    k = max(1, int(np.ceil(tpr * len(ranked) - 1e-9)))  # the k highest must pass: the k-th is the threshold
    return float(ranked[k - 1])


def rejection_accuracy(pred: np.ndarray, target: np.ndarray, is_known: np.ndarray, score: np.ndarray,
                       threshold: float, unknown_index: int | None) -> float:
    """Open-set accuracy: a known image must be accepted and classified right, an unknown one rejected."""
    accepted = score >= threshold
    if unknown_index is not None:
        accepted &= pred != unknown_index
    ok_known = is_known & accepted & (pred == target)
    ok_unknown = ~is_known & ~accepted
    return float((ok_known | ok_unknown).mean())


def table(test: dict[str, Any], valid: dict[str, Any], unknown_index: int | None, temperature: float) -> dict[str, dict]:
    """One row per score: AUROC, FPR@95%TPR, validation threshold, open-set accuracy on test."""
    out: dict[str, dict] = {}
    s_test = scores(test["logits"], temperature, unknown_index)
    s_valid = scores(valid["logits"], temperature, unknown_index)
    for name, s in s_test.items():
        sc, known = s.numpy().astype(np.float64), test["is_known"]
        thr = threshold_for_tpr(s_valid[name].numpy()[valid["is_known"]])
        pred = test["logits"].argmax(1).numpy()
        both = bool(known.any() and (~known).any())  # AUROC needs known and unknown images
        out[name] = {
            "auroc": round(float(roc_auc_score(known, sc)), 6) if both else None,
            "fpr_at_95tpr": round(fpr_at_tpr(known, sc), 6) if both else None,
            "threshold": round(thr, 6),
            "open_set_accuracy": round(rejection_accuracy(pred, test["target"], known, sc, thr, unknown_index), 6),
            "known_accepted": round(float((sc[known] >= thr).mean()), 6),
            "unknown_rejected": round(float((sc[~known] < thr).mean()), 6) if (~known).any() else None,
        }
    return out


def breakdown(pred: np.ndarray, target: np.ndarray, accepted: np.ndarray, origin_kind: np.ndarray) -> dict[str, Any]:
    """Known accuracy, and unknown recall / known precision against seen and unseen (held-out) unknowns.

    `accepted`: the model calls the image known (and `pred` is its class); `origin_kind` is
    'known', 'seen' or 'unseen' per image."""
    known = origin_kind == "known"
    out: dict[str, Any] = {"known_accuracy": round(float((accepted & (pred == target))[known].mean()), 6)
                           if known.any() else None}
    for kind in ("seen", "unseen"):
        unk = origin_kind == kind
        if not unk.any():
            out[kind] = None
            continue
        called_known = accepted & (known | unk)
        true_known = called_known & known
        out[kind] = {"n_images": int(unk.sum()),
                     "unknown_recall": round(float((~accepted[unk]).mean()), 6),
                     "known_precision": round(float(true_known.sum() / max(called_known.sum(), 1)), 6)}
    return out
