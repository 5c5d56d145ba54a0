"""Closed-set metrics of one labelled set (scikit-learn): accuracy, loss, macro-F1, per-class report."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from sklearn.metrics import classification_report, f1_score


def _r(x: float) -> float:
    """Round for stable, readable metrics files."""
    return round(float(x), 6)


def compute(targets: torch.Tensor, logits: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, loss, macro-F1 and per-class precision/recall/F1 of one labelled set."""
    y = targets.numpy()
    pred = logits.argmax(1).numpy()
    labels = list(range(len(names)))
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    rep = report_dict(targets, logits, names)
    per_class = {n: {k: rep[n][k] for k in ("precision", "recall", "f1-score")} | {"support": int(rep[n]["support"])}
                 for n in names}
    return {
        "accuracy": _r((pred == y).mean()),
        "loss": _r(loss),
        "macro_f1": _r(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "n_images": int(len(y)),
        "per_class": per_class,
    }


def report_text(targets: torch.Tensor, logits: torch.Tensor, names: Sequence[str]) -> str:
    labels = list(range(len(names)))
    return classification_report(targets.numpy(), logits.argmax(1).numpy(), labels=labels,
                                 target_names=list(names), digits=4, zero_division=0)


def report_dict(targets: torch.Tensor, logits: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    labels = list(range(len(names)))
    rep = classification_report(targets.numpy(), logits.argmax(1).numpy(), labels=labels,
                                target_names=list(names), output_dict=True, zero_division=0)
    return {k: ({m: _r(v) for m, v in val.items()} if isinstance(val, dict) else _r(val)) for k, val in rep.items()}
