"""The summary stage's body: the headline numbers of the pipeline's models, read from their metrics files and
logged to the pipeline run's MLflow parent run (tracking.pipeline_summary), with the files themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import tracking
from .errors import PipelineError

TRAINING_KEYS = ("best_val_acc", "best_val_loss", "best_epoch")


def named(arg: str) -> tuple[str, Path]:
    """A NAME=PATH command-line argument."""
    name, sep, path = arg.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {arg!r}")
    return name, Path(path)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluation_headline(m: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy, macro-F1, loss, ECE, the primary open-set score's AUROC and the unseen-unknown recall."""
    open_set = m.get("open_set") or {}
    primary = (open_set.get("scores") or {}).get(open_set.get("primary_score")) or {}
    return {"test_accuracy": m.get("accuracy"), "test_macro_f1": m.get("macro_f1"), "test_loss": m.get("loss"),
            "test_ece": (m.get("calibration") or {}).get("ece"), "test_auroc": primary.get("auroc"),
            "test_unseen_unknown_recall": (open_set.get("unseen") or {}).get("unknown_recall")}


def headline(training: dict[str, dict[str, Any]], evaluation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`<model>.<metric>` for every model: its training summary and, where evaluated, its test numbers."""
    out = {f"{name}.{k}": m[k] for name, m in training.items() for k in TRAINING_KEYS if _number(m.get(k))}
    for name, m in evaluation.items():
        out |= {f"{name}.{k}": v for k, v in evaluation_headline(m).items() if _number(v)}
    return {k: float(v) for k, v in out.items()}


def _read(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    try:
        return {name: json.loads(path.read_text(encoding="utf-8")) for name, path in files.items()}
    except (OSError, ValueError) as exc:
        raise PipelineError(f"summary: cannot read a metrics file: {exc}") from exc


def summarize(training: dict[str, Path], evaluation: dict[str, Path], params: dict[str, Any]) -> dict[str, float]:
    """The whole stage: read, pick the headline numbers, log them (and the files) to the parent run."""
    values = headline(_read(training), _read(evaluation))
    parent = tracking.pipeline_summary(params, values, [*training.values(), *evaluation.values()])
    shown = ", ".join(f"{k} {values[k]:.4f}" for k in tracking.PIPELINE_COLUMNS if k in values)
    print(f"summary: MLflow run {parent} ({tracking.exp_name()}): {shown}")
    return values
