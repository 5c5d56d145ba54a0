"""Glue the stages share: load a split into tensors, run training phases, write their outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, evaluation, models
from .atomic import write_json
from .data import images, manifest
from .errors import PipelineError
from .tracking import Tracker
from .training import Data, FitResult, Phase, Preproc, fit, resolve_device


def read_classes(split_dir: Path) -> list[str]:
    path = split_dir / "classes.json"
    if not path.is_file():
        raise PipelineError(f"classes file not found: {path}")
    return list(json.loads(path.read_text())["classes"])


def load_data(manifest_path: Path, raw: Path, classes: list[str], size: int) -> Data:
    """Decode a manifest's images once into a uint8 NCHW tensor with class-index targets."""
    rows = manifest.read(manifest_path)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise PipelineError(f"manifest {manifest_path}: labels {unknown} are not among the classes {classes}")
    arr = images.load_array([r["path"] for r in rows], raw, size, desc=f"decode {manifest_path.name}")
    targets = torch.tensor([index[r["label"]] for r in rows], dtype=torch.long)
    return Data(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), targets)


def preproc(model: dict[str, Any], augment: dict[str, Any], device: str) -> Preproc:
    sp = models.spec(model["backbone"])
    return Preproc(sp.mean, sp.std, augment, model["input_size"], resolve_device(device), model["channels_last"])


def meta_for(model: dict[str, Any], classes: list[str], pp: Preproc, extra: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata in primitive types: enough for predict to need nothing else."""
    return {"backbone": model["backbone"], "classes": list(classes), "input_size": model["input_size"],
            "mean": list(pp.mean), "std": list(pp.std), **extra}


def run_phases(net: models.Net, phases: list[tuple[str, Phase]], train: Data, valid: Data, pp: Preproc,
               tracker: Tracker) -> tuple[FitResult, list[dict[str, Any]]]:
    """Run phases in order (each starts from the previous one's best); history numbered across phases."""
    history: list[dict[str, Any]] = []
    best = FitResult()
    offset = 0
    for name, ph in phases:
        t0 = time.perf_counter()

        def hook(rec: dict[str, float], name: str = name, offset: int = offset) -> None:
            rec = {**rec, "epoch": rec["epoch"] + offset}
            tracker.epoch(rec)
            history.append({**rec, "phase": name})
            print(f"[{name}] epoch {int(rec['epoch'])}: train_loss {rec['train_loss']:.4f} "
                  f"train_acc {rec['train_acc']:.4f} val_loss {rec['val_loss']:.4f} val_acc {rec['val_acc']:.4f}",
                  flush=True)

        res = fit(net, train, valid, ph, pp, hook)
        tracker.metrics({f"{name}_seconds": time.perf_counter() - t0})
        res_best_epoch = res.best_epoch + offset if res.best_epoch else best.best_epoch
        if not best.best_state or res.best_val_acc > best.best_val_acc or (
            res.best_val_acc == best.best_val_acc and res.best_val_loss < best.best_val_loss
        ):
            best = FitResult(best_epoch=res_best_epoch, best_val_acc=res.best_val_acc,
                             best_val_loss=res.best_val_loss, best_state=res.best_state)
        best.last_state = res.last_state
        net.load_state_dict(res.best_state)
        offset += ph.epochs
    return best, history


def save_training(out_dir: Path, stem: str, net: models.Net, meta: dict[str, Any], res: FitResult,
                  history: list[dict[str, Any]], metrics_path: Path, plots_dir: Path, tracker: Tracker) -> None:
    """Best and last checkpoints, metrics JSON, history CSV and curves PNG, all logged to MLflow."""
    net.load_state_dict(res.last_state)
    checkpoint.save(out_dir / f"{stem}_last.pt", net, {**meta, "epoch": len(history)})
    net.load_state_dict(res.best_state)
    checkpoint.save(out_dir / f"{stem}.pt", net, {**meta, "epoch": res.best_epoch})
    summary = {"best_epoch": res.best_epoch, "best_val_acc": round(res.best_val_acc, 6),
               "best_val_loss": round(res.best_val_loss, 6), "epochs": len(history),
               "last_val_acc": round(history[-1]["val_acc"], 6) if history else None}
    write_json(metrics_path, summary)
    evaluation.write_history_csv(plots_dir / f"{stem}.csv", history)
    evaluation.curves_png(plots_dir / f"{stem}.png", history, f"{stem}: loss and accuracy per epoch", res.best_epoch)
    tracker.metrics(summary)
    for p in (metrics_path, plots_dir / f"{stem}.csv", plots_dir / f"{stem}.png"):
        tracker.artifact(p)
