"""Glue the stages share: load a split into tensors, run training phases, write their outputs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import calibration, checkpoint, evaluation, models, openset, tracking
from .atomic import write_json
from .data import cache, manifest, transforms
from .errors import PipelineError
from .training import (Data, FitResult, Phase, Preproc, Resume, better, fit, predict_logits, resolve_device,
                       set_seed)


def read_split_info(split_dir: Path) -> dict[str, Any]:
    """classes.json of a split folder: class names, label ids, unknown and held-out ids."""
    path = split_dir / "classes.json"
    if not path.is_file():
        raise PipelineError(f"classes file not found: {path}")
    return json.loads(path.read_text())


def read_classes(split_dir: Path) -> list[str]:
    return list(read_split_info(split_dir)["classes"])


def load_data(split_dir: Path, split: str, raw: Path, classes: list[str], size: int,
              cache_dir: Path | None = None) -> Data:
    """A split's images as a uint8 NCHW tensor (from the decoded cache when fresh) with class-index targets."""
    manifest_path = split_dir / f"{split}.csv"
    rows = manifest.read(manifest_path)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise PipelineError(f"manifest {manifest_path}: labels {unknown} are not among the classes {classes}")
    targets = torch.tensor([index[r["label"]] for r in rows], dtype=torch.long)
    return Data(split_images(split_dir, split, raw, size, cache_dir), targets)


def split_images(split_dir: Path, split: str, raw: Path, size: int, cache_dir: Path | None) -> torch.Tensor:
    """uint8 NCHW tensor of a split, copied once out of the (memory-mapped) decoded cache."""
    arr = cache.load(split_dir, split, raw, size, cache_dir)
    return torch.from_numpy(np.ascontiguousarray(np.transpose(arr, (0, 3, 1, 2))))


def preproc(model: dict[str, Any], augment: dict[str, Any], device: str) -> Preproc:
    sp = models.spec(model["backbone"])
    return Preproc(sp.mean, sp.std, augment, model["input_size"], resolve_device(device), model["channels_last"],
                   model["inference_batch_size"])


def preproc_from_meta(meta: dict[str, Any], device: str, channels_last: bool, batch: int) -> Preproc:
    """Inference preprocessing exactly as the checkpoint was trained: input size, mean, std."""
    return Preproc(tuple(meta["mean"]), tuple(meta["std"]), {}, int(meta["input_size"]), resolve_device(device),
                   channels_last, batch)


def meta_for(model: dict[str, Any], classes: list[str], pp: Preproc, extra: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata in primitive types: enough for predict to need nothing else."""
    return {"backbone": model["backbone"], "classes": list(classes), "input_size": model["input_size"],
            "mean": list(pp.mean), "std": list(pp.std), **extra}


def run_phases(net: models.Net, phases: list[tuple[str, Phase]], train: Data, valid: Data, pp: Preproc,
               tracker: tracking.Tracker, resume: Callable[[str], Resume | None] = lambda name: None,
               ) -> tuple[FitResult, list[dict[str, Any]]]:
    """Run phases in order (each starts from the previous one's best); history numbered across phases.
    `resume(phase name)` says where that phase keeps its resume file (None: no resuming)."""
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

        res = fit(net, train, valid, ph, pp, hook, resume(name))
        tracker.metrics({f"{name}_seconds": time.perf_counter() - t0})
        res_best_epoch = res.best_epoch + offset if res.best_epoch else best.best_epoch
        if not best.best_state or better(res.best_val_acc, res.best_val_loss, best):
            best = FitResult(best_epoch=res_best_epoch, best_val_acc=res.best_val_acc,
                             best_val_loss=res.best_val_loss, best_state=res.best_state)
        best.last_state = res.last_state
        net.load_state_dict(res.best_state)
        offset += ph.epochs
    return best, history


def temperature(net: models.Net, valid: Data, pp: Preproc) -> float:
    """Temperature scaling fitted on the validation split."""
    return calibration.fit_temperature(predict_logits(net, valid.images, pp), valid.targets)


def save_training(out_dir: Path, stem: str, net: models.Net, meta: dict[str, Any], res: FitResult,
                  history: list[dict[str, Any]], valid: Data, pp: Preproc, metrics_path: Path, plots_dir: Path,
                  tracker: tracking.Tracker) -> None:
    """Best and last checkpoints (with their fitted temperature), metrics JSON, curves; all logged to MLflow."""
    net.load_state_dict(res.last_state)
    checkpoint.save(out_dir / f"{stem}_last.pt", net,
                    {**meta, "epoch": len(history), "temperature": temperature(net, valid, pp)})
    net.load_state_dict(res.best_state)
    t_best = temperature(net, valid, pp)
    checkpoint.save(out_dir / f"{stem}.pt", net, {**meta, "epoch": res.best_epoch, "temperature": t_best})
    summary = {"best_epoch": res.best_epoch, "best_val_acc": round(res.best_val_acc, 6),
               "best_val_loss": round(res.best_val_loss, 6), "epochs": len(history),
               "last_val_acc": round(history[-1]["val_acc"], 6) if history else None,
               "last_val_loss": round(history[-1]["val_loss"], 6) if history else None,
               "temperature": round(t_best, 6)}
    write_json(metrics_path, summary)
    evaluation.write_history_csv(plots_dir / f"{stem}.csv", history)
    evaluation.curves_png(plots_dir / f"{stem}.png", history, f"{stem}: loss and accuracy per epoch", res.best_epoch)
    tracker.metrics(summary)
    for p in (metrics_path, plots_dir / f"{stem}.csv", plots_dir / f"{stem}.png"):
        tracker.artifact(p)


@dataclass
class Scored:
    """A split of the known+unknown manifests, scored by one model."""

    logits: torch.Tensor
    target: torch.Tensor  # index in the model's classes, -1 where the label is not one of them
    kind: np.ndarray  # 'known', 'seen' (unknown class trained on) or 'unseen' (held-out class)


def score_split(net: models.Net, split_dir: Path, split: str, raw: Path, cache_dir: Path | None,
                model_classes: list[str], holdout: set[str], pp: Preproc) -> Scored:
    rows = manifest.read(split_dir / f"{split}.csv")
    index = {c: i for i, c in enumerate(model_classes)}
    images = split_images(split_dir, split, raw, pp.size, cache_dir)
    kind = np.array(["known" if r["label"] != manifest.UNKNOWN else ("unseen" if r.get("origin") in holdout else "seen")
                     for r in rows])
    target = torch.tensor([index.get(r["label"], -1) for r in rows], dtype=torch.long)
    return Scored(predict_logits(net, images, pp), target, kind)


def open_set_report(test: Scored, valid: Scored, classes: list[str], t: float) -> dict[str, Any]:
    """Threshold rejection (no unknown class) or the unknown class itself, against known/unknown images."""
    unk = classes.index(manifest.UNKNOWN) if manifest.UNKNOWN in classes else None
    as_dict = lambda s: {"logits": s.logits, "is_known": s.kind == "known", "target": s.target.numpy()}  # noqa: E731
    table = openset.table(as_dict(test), as_dict(valid), unk, t)
    primary = "unknown_class" if unk is not None else "msp"
    score = openset.scores(test.logits, t, unk)[primary].numpy()
    accepted = score >= table[primary]["threshold"]
    if unk is not None:
        accepted = test.logits.argmax(1).numpy() != unk
    detail = openset.breakdown(test.logits.argmax(1).numpy(), test.target.numpy(), accepted, test.kind)
    return {"scores": table, "primary_score": primary, **detail}


def closed_set(test: Scored, classes: list[str]) -> np.ndarray:
    """Rows the model's own classes cover: known images, plus seen unknowns for a model with `unknown`."""
    keep = test.kind == "known"
    if manifest.UNKNOWN in classes:
        keep |= test.kind == "seen"
    return keep


def training_stage(stage: str, stem: str, p: dict[str, Any], split_dir: Path, cache_dir: Path, raw: Path,
                   phases: list[tuple[str, Phase]], init: Callable[[list[str]], models.Net]) -> FitResult:
    """What train_head, finetune and retrain share: seed, data, one MLflow run, phases, and their outputs
    (models/<stem>.pt and _last.pt, metrics/<stage>.json, plots/<stem>.csv/.png)."""
    set_seed(p["seed"], p["device"])
    classes = read_classes(split_dir)
    pp = preproc(p["model"], p["augment"], p["device"])
    if p["augment"]["engine"] == "v2":
        transforms.build_v2(p["augment"]["v2"])  # a bad op fails here, before any work
    resume_dir = Path("models/.resume")
    resume = (lambda name: Resume(resume_dir / f"{stem}-{name}.pt", p["train"]["checkpoint_every"])) \
        if p["train"]["resume"] else (lambda name: None)
    with tracking.stage_run(stage, p, p["tracking"]["experiment"]) as tr:
        net = init(classes)
        net.dropout.p = float(p["model"]["head_dropout"])
        train = load_data(split_dir, "train", raw, classes, pp.size, cache_dir)
        valid = load_data(split_dir, "valid", raw, classes, pp.size, cache_dir)
        res, hist = run_phases(net, phases, train, valid, pp, tr, resume)
        meta = meta_for(p["model"], classes, pp, {"stage": stage})
        save_training(Path("models"), stem, net, meta, res, hist, valid, pp, Path(f"metrics/{stage}.json"),
                      Path("plots"), tr)
    for f in resume_dir.glob(f"{stem}-*.pt"):  # outputs are complete: progress files are no longer needed
        f.unlink()
    print(f"{stage}: best epoch {res.best_epoch}, val_acc {res.best_val_acc:.4f} -> models/{stem}.pt, "
          f"metrics/{stage}.json, plots/{stem}.png")
    return res
