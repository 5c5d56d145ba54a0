"""What the train_head, finetune and retrain stages share: seed, data, one MLflow run, phases, outputs.

Outputs of a stage named `name` (head, finetuned, retrained): models/<name>.pt (best by validation),
models/<name>_last.pt, metrics/<name>.json, plots/<name>.csv and plots/<name>.png."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .. import checkpoint, models, tracking
from .. import features as feature_cache
from ..atomic import write_json
from ..config.phases import Phase
from ..data import transforms
from ..data.splitdir import Data, SplitDir
from ..errors import PipelineError
from ..evaluation import plots
from ..evaluation.calibration import fit_temperature
from ..inference import Preproc, predict_logits, preproc_from_params
from ..progress import say
from ..runtime import set_seed
from . import parallel
from .loop import FitResult, better, fit, memo_for
from .resume import Resume


HEADLINE = ("best_epoch", "best_val_acc", "best_val_loss")  # metrics/<name>.json, of `summary`'s keys


@dataclass(frozen=True)
class Outputs:
    """Where a training stage writes (the stage's name is the stem of every file)."""

    name: str
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    plots: Path = Path("plots")
    resume: Path = Path("models/.resume")

    def checkpoint(self, last: bool = False) -> Path:
        return self.models / f"{self.name}{'_last' if last else ''}.pt"


preproc = preproc_from_params  # training-time preprocessing from the `model` params section


def meta_for(model: dict[str, Any], classes: list[str], prep: Preproc, extra: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata in primitive types: enough for predict to need nothing else."""
    return {"backbone": model["backbone"], "classes": list(classes), "input_size": model["input_size"],
            "mean": list(prep.mean), "std": list(prep.std), "input_norm": prep.input_norm, **extra}


def _epoch_hook(name: str, offset: int, tracker: tracking.Tracker | None,
                history: list[dict[str, Any]]) -> Callable[[dict[str, float]], None]:
    """Per-epoch record of phase `name`: numbered across phases, logged (with a tracker), kept, printed."""
    def hook(rec: dict[str, float]) -> None:
        rec = {**rec, "epoch": rec["epoch"] + offset}
        if tracker is not None:
            tracker.epoch(rec)
        history.append({**rec, "phase": name})
        print(f"[{name}] epoch {int(rec['epoch'])}: train_loss {rec['train_loss']:.4f} "
              f"train_acc {rec['train_acc']:.4f} val_loss {rec['val_loss']:.4f} val_acc {rec['val_acc']:.4f}",
              flush=True)
    return hook


def run_phases(net: models.Net, phases: list[tuple[str, Phase]], train: Data, valid: Data, prep: Preproc,
               augment: dict[str, Any], tracker: tracking.Tracker | None,
               resume: Callable[[str], Resume | None] = lambda name: None,
               precision: str = "fp32") -> tuple[FitResult, list[dict[str, Any]]]:
    """Run phases in order (each starts from the previous one's best); history numbered across phases.
    `tracker` None: epochs are printed, not logged (a fold of crossval); `resume(phase name)` says where that
    phase keeps its resume file (None: no resuming); `precision` train.precision."""
    history: list[dict[str, Any]] = []
    best = FitResult()
    offset = 0
    memos = memo_for([phase for _, phase in phases], len(net.groups))
    for (name, phase), memo in zip(phases, memos):
        t0 = time.perf_counter()
        res = fit(net, train, valid, phase, prep, augment, _epoch_hook(name, offset, tracker, history), resume(name),
                  precision, memo)
        if tracker is not None:
            tracker.metrics({f"{name}_seconds": time.perf_counter() - t0})
        best_epoch = res.best_epoch + offset if res.best_epoch else best.best_epoch
        if not best.best_state or better(res.best_val_acc, res.best_val_loss, best, phase.keep):
            best = FitResult(best_epoch=best_epoch, best_val_acc=res.best_val_acc,
                             best_val_loss=res.best_val_loss, best_state=res.best_state)
        best.last_state = res.last_state
        net.load_state_dict(res.best_state)
        offset += phase.epochs
    return best, history


def temperature(net: models.Net, valid: Data, prep: Preproc) -> float:
    """Temperature scaling fitted on the validation split."""
    return fit_temperature(predict_logits(net, valid.images, prep), valid.targets)


def summary(res: FitResult, history: list[dict[str, Any]], t_best: float) -> dict[str, Any]:
    """What the stage logs to MLflow: which epoch was kept, its validation scores, the last epoch's, the
    temperature (metrics/<name>.json keeps the HEADLINE keys)."""
    last = history[-1] if history else None
    return {"best_epoch": res.best_epoch, "best_val_acc": round(res.best_val_acc, 6),
            "best_val_loss": round(res.best_val_loss, 6), "epochs": len(history),
            "last_val_acc": round(last["val_acc"], 6) if last else None,
            "last_val_loss": round(last["val_loss"], 6) if last else None,
            "temperature": round(t_best, 6)}


def save_training(out: Outputs, net: models.Net, meta: dict[str, Any], res: FitResult,
                  history: list[dict[str, Any]], valid: Data, prep: Preproc, tracker: tracking.Tracker) -> None:
    """Best and last checkpoints (with their fitted temperature), metrics JSON, curves; all logged to MLflow."""
    net.load_state_dict(res.last_state)
    checkpoint.save(out.checkpoint(last=True), net,
                    {**meta, "epoch": len(history), "temperature": temperature(net, valid, prep)})
    net.load_state_dict(res.best_state)
    t_best = temperature(net, valid, prep)
    checkpoint.save(out.checkpoint(), net, {**meta, "epoch": res.best_epoch, "temperature": t_best})
    values = summary(res, history, t_best)
    metrics_path, curves_csv, curves_png = out.metrics / f"{out.name}.json", out.plots / f"{out.name}.csv", \
        out.plots / f"{out.name}.png"
    write_json(metrics_path, {k: values[k] for k in HEADLINE})  # the rest: MLflow (and the checkpoint's meta)
    plots.write_history_csv(curves_csv, history)
    plots.curves_png(curves_png, history, f"{out.name}: loss and accuracy per epoch", res.best_epoch)
    tracker.metrics(values)
    for path in (metrics_path, curves_csv, curves_png):
        tracker.artifact(path)


def train(stage: str, out: Outputs, params: dict[str, Any], split: SplitDir, phases: list[tuple[str, Phase]],
          init: Callable[[list[str]], models.Net], features: Path | None = None) -> FitResult:
    """A whole training stage: seed, data, one MLflow run, the phases in order, and the stage's outputs.
    `features`: a tlpipe.features folder of this split's plain ImageNet features, used when it matches (only a
    net fresh from ImageNet weights may take them: train_head). train.distributed: a plain process re-runs its
    command under torchrun and exits (parallel.relaunch); under torchrun every rank trains, rank 0 alone logs
    to MLflow and writes (see parallel)."""
    parallel.relaunch(params)
    set_seed(params["seed"], params["device"])
    classes = split.classes()
    prep = preproc(params["model"], params["device"])
    precision = params["train"]["precision"]
    parallel.check_precision(precision, prep.device)  # fp16 on the CPU fails here, before any work
    augment = params["augment"]
    if augment["engine"] == "v2":
        transforms.build_v2(augment["v2"])  # a bad op fails here, before any work
    every = params["train"]["checkpoint_every"]
    resume = (lambda phase: Resume(out.resume / f"{out.name}-{phase}.pt", every)) if params["train"]["resume"] \
        else (lambda phase: None)
    with parallel.group(prep.device) as device, \
            parallel.stage_run(stage, params, params["tracking"]["experiment"]) as tracker:
        prep = replace(prep, device=device)  # under torchrun on CUDA: this rank's GPU
        net = init(classes)
        net.dropout.p = float(params["model"]["head_dropout"])
        train_data, valid = split.data("train", classes, prep.size), split.data("valid", classes, prep.size)
        shared = feature_cache.load(features, params, split, ("train", "valid"))
        train_data.features, valid.features = shared.get("train"), shared.get("valid")
        res, history = run_phases(net, phases, train_data, valid, prep, augment, tracker, resume, precision)
        if not parallel.is_main():
            return res
        extra = {"stage": stage, **({"roi_crop": True} if params["data"].get("roi_crop") else {}),  # crops in
                 **({"precision": precision} if precision != "fp32" else {})}  # fp32 checkpoints stay as they were
        save_training(out, net, meta_for(params["model"], classes, prep, extra), res, history, valid, prep, tracker)
    for f in out.resume.glob(f"{out.name}-*.pt"):  # outputs are complete: progress files are no longer needed
        f.unlink()
    say(f"{stage}: best epoch {res.best_epoch}, val_acc {res.best_val_acc:.4f} -> {out.checkpoint()}, "
        f"{out.metrics / out.name}.json, {out.plots / out.name}.png")
    return res


def extend_head(init: Path, backbone: str, classes: list[str]) -> models.Net:
    """The checkpoint at `init` with a head for `classes` (its known rows copied; the rest new)."""
    net, meta = checkpoint.restore(init, backbone)
    if list(meta["classes"]) != classes[:len(meta["classes"])]:
        raise PipelineError(f"{init}: its classes {meta['classes']} are not the first of {classes}")
    models.replace_head(net, len(classes), keep_rows=len(meta["classes"]))
    return net
