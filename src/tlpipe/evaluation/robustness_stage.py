"""The robustness report of one checkpoint, run by the evaluate stage after its metrics: closed-set test
accuracy under seeded corruptions (evaluation.robustness), written as a metrics file, DVC plot data and a
figure, logged to its own MLflow run (`robustness_<name>`).

Measured on exactly the rows evaluate's closed-set metrics use (evaluation.stage.closed_set): the known test
images, plus the seen-unknown ones for a model with an `unknown` class. Run inside evaluate, it reuses the
loaded model, the decoded test images and their clean logits, instead of paying a stage's start-up (imports,
MLflow store, checkpoint, a clean pass) a second time."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tracking
from ..atomic import atomic_path, write_json
from ..inference import Preproc
from ..models import Net
from ..progress import say
from ..runtime import set_seed
from . import robustness
from .plots import _pyplot, _save


def outputs(name: str, metrics: Path = Path("metrics"), plots: Path = Path("plots"),
            reports: Path = Path("reports")) -> dict[str, Path]:
    """Where the stage writes for the model `name`: headline metrics (clean, mean, worst), the full table in
    reports/, plot data and the figure."""
    return {"metrics": metrics / f"robustness_{name}.json", "report": reports / f"robustness_{name}.json",
            "csv": plots / f"robustness_{name}.csv",
            "png": plots / f"robustness_{name}.png"}


def write_csv(path: Path, result: dict[str, Any]) -> None:
    """One row per (corruption, severity): corruption,severity,accuracy,case (case labels a bar in DVC plots)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["corruption", "severity", "accuracy", "case"])
        for name, row in result["corruptions"].items():
            for s in robustness.SEVERITIES:
                w.writerow([name, s, f"{row[str(s)]:.6f}", f"{name} s{s}"])


def commonest(worst: dict[str, Any], sep: str) -> str:
    """`sep` + "commonest error <actual->predicted n>" of the worst pass, or "" when it made none."""
    return f"{sep}commonest error {worst['commonest_error']}" if worst.get("commonest_error") else ""


def figure(path: Path, result: dict[str, Any], title: str) -> None:
    """Grouped horizontal bars, corruption x severity accuracy, the clean and mean accuracy as lines."""
    plt = _pyplot()
    names = list(result["corruptions"])
    fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.45 * len(names)), dpi=110)
    y = np.arange(len(names))[::-1]
    colours = ("#9ecae1", "#4292c6", "#08519c")
    for k, s in enumerate(robustness.SEVERITIES):
        acc = [result["corruptions"][n][str(s)] for n in names]
        ax.barh(y + (1 - k) * 0.27, acc, height=0.27, color=colours[k], label=f"severity {s}")
    ax.axvline(result["clean"], color="black", lw=1.5, label=f"clean {result['clean']:.3f}")
    ax.axvline(result["mean"], color="#d62728", lw=1.2, ls="--", label=f"corrupted mean {result['mean']:.3f}")
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("accuracy")
    w = result["worst"]
    worst = f"{w['corruption']} severity {w['severity']} ({w['accuracy']:.3f}{commonest(w, '; ')})"
    ax.set_title(f"{title}\nworst: {worst}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def subset(n: int, total: int, seed: int) -> torch.Tensor:
    """Indices of a seeded random `n` of `total` rows, in their order (n = 0 or n >= total: every row)."""
    if not 0 < n < total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def run(net: Net, pp: Preproc, images: torch.Tensor, targets: torch.Tensor, clean_logits: torch.Tensor, name: str,
        classes: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """The report of one model on its closed-set test rows (`images`, `targets` indexing `classes`, and the
    logits evaluate scored them with, which give the clean accuracy): corrupted passes, outputs, one MLflow run."""
    set_seed(params["seed"], params["device"])  # the same state as a fresh process, whatever ran before
    out = outputs(name)
    idx = subset(params["robustness"]["max_images"], len(targets), params["seed"])
    images, targets, clean_logits = images[idx], targets[idx], clean_logits[idx]
    with tracking.stage_run(f"robustness_{name}", params, params["tracking"]["experiment"]) as tracker:
        start = time.perf_counter()
        clean = round(float((clean_logits.argmax(1) == targets).float().mean()) if len(targets) else 0.0, 6)
        result = robustness.report(net, images, targets, pp, params["seed"], params["robustness"]["corruptions"],
                                   clean=clean, classes=classes)
        seconds = time.perf_counter() - start
        write_json(out["metrics"], {k: result[k] for k in ("clean", "mean", "worst")})
        write_json(out["report"], result)
        write_csv(out["csv"], result)
        figure(out["png"], result, f"{name} model: test accuracy under corruptions (n={len(targets)})")
        tracker.metrics(result, prefix="robustness_")
        for f in (out["metrics"], out["report"], out["csv"], out["png"]):
            tracker.artifact(f)
    w = result["worst"]
    say(f"robustness {name}: clean {result['clean']:.4f}, corrupted mean {result['mean']:.4f}, worst "
        f"{w['corruption']} s{w['severity']} {w['accuracy']:.4f} ({seconds:.1f} s)")
    error = commonest(w, "the worst pass's ")  # a line of its own: GTSRB's class names are long
    say(f"  {error + ' ' if error else ''}-> {out['metrics']}")
    return result
