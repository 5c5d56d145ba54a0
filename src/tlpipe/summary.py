"""The summary stage's body: the headline numbers of the pipeline's models, read from their metrics files and
logged to the pipeline run's MLflow parent run (tracking.pipeline_summary), with the files themselves; and
metrics/summary.json, the pipeline's one DVC metrics file: eight short keys, so that `dvc metrics show`,
`dvc metrics diff` and `dvc exp show` fit a 120-column terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import tracking
from .atomic import write_json, write_text
from .errors import PipelineError
from .progress import say

TRAINING_KEYS = ("best_val_acc", "best_val_loss", "best_epoch")
SHORT = {  # metrics/summary.json key: (model, key of metrics/evaluate_<model>.json), in the order shown
    "ft_acc": ("finetuned", "accuracy"),  # known-class model, test accuracy
    "ft_lo": ("finetuned", "accuracy_lo"),  # its 95% group-bootstrap interval
    "ft_hi": ("finetuned", "accuracy_hi"),
    "ft_f1": ("finetuned", "macro_f1"),
    "baseline": ("finetuned", "baseline_accuracy"),  # raw-pixel logistic regression on the same test images
    "rt_acc": ("retrained", "accuracy"),  # with the unknown class, test accuracy
    "rt_auroc": ("retrained", "auroc"),  # known vs unknown test images
    "rt_unseen": ("retrained", "unknown_recall_unseen"),  # unknown images of classes never trained on, called unknown
}


def named(arg: str) -> tuple[str, Path]:
    """A NAME=PATH command-line argument."""
    name, sep, path = arg.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {arg!r}")
    return name, Path(path)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluation_headline(m: dict[str, Any]) -> dict[str, Any]:
    """`test_<key>` for every number of an evaluate stage's headline file (metrics/evaluate_<model>.json:
    accuracy and its interval, macro-F1, loss, scaled ECE, the open-set AUROC, unknown recall, baseline)."""
    return {f"test_{k}": v for k, v in m.items()}


def headline(training: dict[str, dict[str, Any]], evaluation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`<model>.<metric>` for every model: its training summary and, where evaluated, its test numbers
    (non-numbers skipped)."""
    out = {f"{name}.{k}": m[k] for name, m in training.items() for k in TRAINING_KEYS if _number(m.get(k))}
    for name, m in evaluation.items():
        out |= {f"{name}.{k}": v for k, v in evaluation_headline(m).items() if _number(v)}
    return {k: float(v) for k, v in out.items()}


def short_headline(evaluation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """metrics/summary.json: SHORT's keys that the evaluate files have numbers for, in SHORT's order."""
    values = {k: (evaluation.get(model) or {}).get(key) for k, (model, key) in SHORT.items()}
    return {k: float(v) for k, v in values.items() if _number(v)}


def _read(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    try:
        return {name: json.loads(path.read_text(encoding="utf-8")) for name, path in files.items()}
    except (OSError, ValueError) as exc:
        raise PipelineError(f"summary: cannot read a metrics file: {exc}") from exc


def summarize(training: dict[str, Path], evaluation: dict[str, Path], params: dict[str, Any],
              out: Path | None = None, short: Path | None = None) -> dict[str, float]:
    """The whole stage: read, pick the headline numbers, log them (and the files) to the parent run, then
    write them to `out` (a DVC cache output: absent on a fresh clone, so `dvc repro` runs this stage there) and
    the short headline to `short` (metrics/summary.json, key order kept)."""
    evaluated = _read(evaluation)
    values = headline(_read(training), evaluated)
    parent = tracking.pipeline_summary(params, values, [*training.values(), *evaluation.values()])
    if out is not None:
        write_json(out, values)
    if short is not None:
        write_text(short, json.dumps(short_headline(evaluated), indent=2) + "\n")
    shown = ", ".join(f"{k} {values[k]:.4f}" for k in tracking.PIPELINE_COLUMNS if k in values)
    files = ", ".join(str(p) for p in (out, short) if p is not None)
    say(f"summary: MLflow run {parent} ({tracking.exp_name()}): {shown}" + (f" -> {files}" if files else ""))
    return values
