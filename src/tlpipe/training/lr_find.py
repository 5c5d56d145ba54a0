"""Learning-rate finder (Smith 2015, as fastai's `lr_find`): which value to pass to `-S train.lr`.

A phase's trainable part trains for `steps` batches while the rate grows exponentially from `start` to `end`,
on what the phase caches anyway: pooled features for the head, prefix activations for fine-tuning, so a sweep
takes seconds after those are computed. The loss is smoothed (exponential average, bias-corrected) and the sweep
stops once it exceeds `DIVERGED` times its minimum. RULE states how the suggestion is read off the curve."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import checkpoint, models, tracking
from .. import features as feature_cache
from ..atomic import write_json
from ..config.phases import Phase
from ..data.splitdir import Data, SplitDir
from ..data.transforms import make_augment
from ..errors import PipelineError
from ..evaluation import plots
from ..inference import Preproc, preproc_from_params, to_channels_last
from ..progress import say
from ..runtime import set_seed
from .loop import Mode, create_mode
from .optim import make_optimizer

SMOOTHING = 0.9  # weight of the running average per step (fastai: 0.98, whose minimum lags far behind the loss)
DIVERGED = 4.0  # the sweep stops when the smoothed loss exceeds this multiple of its minimum
SKIP_START = 10  # first steps left out of the minimum: the running average has not settled (fastai skips 10 too)
FLAT = 0.1  # a sweep whose smoothed loss falls by less than this share of its level before its minimum is flat
RISE = 0.05  # a flat sweep's edge: the last rate before the smoothed loss first exceeds its minimum by this share
RULE = (f"min/10: the rate of the lowest smoothed loss after the first {SKIP_START} steps, divided by 10 (fastai); "
        f"on a flat sweep (the loss falls < {FLAT:.0%} first, as from a trained head), edge/3: the last rate before "
        f"the loss rises {RISE:.0%} above its minimum, divided by 3 (Smith 2017)")


@dataclass
class Sweep:
    """Rates tried, raw and smoothed loss at each, and the suggestion read off them by RULE."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    lr_min: float  # the rate of the lowest smoothed loss
    suggestion: float
    diverged: bool  # True when the sweep stopped early, the loss having blown up
    rule: str = "min/10"  # which half of RULE gave the suggestion: "min/10", or "edge/3" for a flat sweep

    def rows(self) -> list[dict[str, float]]:
        """One row per step, for the CSV that `dvc plots` draws (log10 of the rate: the x axis)."""
        return [{"step": i, "lr": lr, "log10_lr": round(math.log10(lr), 6), "loss": round(loss, 6),
                 "smoothed": round(sm, 6)} for i, (lr, loss, sm) in enumerate(zip(self.lrs, self.losses, self.smoothed))]


def rates(start: float, end: float, steps: int) -> list[float]:
    """`steps` rates from `start` to `end`, evenly spaced on a log scale."""
    if not 0 < start < end or steps < 2:
        raise PipelineError(f"lr_find: need 0 < start_lr < end_lr and steps >= 2, got {start}, {end}, {steps}")
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, str]:
    """(lr_min, suggestion, rule) by RULE (a sweep shorter than SKIP_START + 1 steps: over all of it). A sweep
    that starts from a trained model cannot lower the loss: it stays flat, then blows up, and where its noise
    puts the minimum is chance (min/10 then said 5e-7 for fine-tuning GTSRB). What such a sweep does show is
    the edge, the largest rate the model tolerates; Smith (2017) trains at a third to a quarter of it."""
    first = SKIP_START if len(smoothed) > SKIP_START else 0
    best = min(range(first, len(smoothed)), key=smoothed.__getitem__)
    low, top = smoothed[best], max(smoothed[first : best + 1])
    if top - low >= FLAT * top:
        return lrs[best], lrs[best] / 10.0, "min/10"
    rises = [i for i in range(first, len(smoothed)) if not smoothed[i] <= (1 + RISE) * low]  # inf, nan count
    edge = lrs[max(rises[0] - 1, first)] if rises else lrs[len(smoothed) - 1]  # never rose: its last rate
    return lrs[best], edge / 3.0, "edge/3"


def _mode(net: models.Net, phase: Phase) -> Mode:
    """The phase's own Mode on one cached view of the plain images (features for the head, the prefix for
    fine-tuning): a sweep of a few hundred random batches needs no augmented views."""
    return create_mode(net, replace(phase, prefix_views=1, feature_views=1))


def sample(train: Data, n: int, seed: int) -> Data:
    """A seeded random `n` of the training images (all when n >= their number), with their cached features:
    a sweep draws steps x batch_size images, so computing a prefix for the others would be wasted."""
    if n >= len(train.targets):
        return train
    idx = torch.randperm(len(train.targets), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Data(train.images[idx], train.targets[idx], None if train.features is None else train.features[idx])


def sweep(net: models.Net, train: Data, phase: Phase, prep: Preproc, augment: dict[str, Any], steps: int,
          start: float, end: float, seed: int) -> Sweep:
    """Sweep the rate for `phase` (head only when unfreeze_blocks is 0, else the unfrozen blocks and head).
    `net` is trained in place by the sweep: pass a copy you do not need afterwards."""
    net.to(prep.device)
    if prep.channels_last:
        to_channels_last(net)
    mode = _mode(net, phase)
    train = sample(train, steps * phase.batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    tf = make_augment(augment, torch.Generator().manual_seed(seed + 1), prep.size)
    mode.build(train, Data(train.images[:1], train.targets[:1]), prep, tf)  # validation is not needed
    opt = make_optimizer(mode.param_groups(), phase)
    ratios = [g["lr"] / phase.lr for g in opt.param_groups]  # e.g. finetune's backbone_lr_mult
    loss_fn, y = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing), train.targets.to(prep.device)
    mode.train_mode()
    lrs, losses, smoothed, avg = [], [], [], 0.0
    for i, lr in enumerate(rates(start, end, steps)):
        for g, r in zip(opt.param_groups, ratios):
            g["lr"] = lr * r
        idx = torch.randint(0, len(y), (min(phase.batch_size, len(y)),), generator=gen)
        loss = loss_fn(mode.logits(mode.inputs(idx, gen)).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.item()) if torch.isfinite(loss) else float("inf")
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        lrs.append(lr), losses.append(value), smoothed.append(avg / (1 - SMOOTHING ** (i + 1)))
        if i > 5 and (not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGED * min(smoothed)):
            break
    diverged = len(lrs) < steps
    lr_min, suggestion, rule = suggest(lrs, smoothed)
    return Sweep(lrs, losses, smoothed, lr_min, suggestion, diverged, rule)


def _starts(params: dict[str, Any], init: Path, n_classes: int) -> dict[str, tuple[str, Callable[[], models.Net]]]:
    """Per sweep: the phase it stands for and the weights it starts from (those its stage starts from)."""
    model = params["model"]
    return {"head": ("train_head", lambda: models.build(model["backbone"], n_classes, model["weights"] == "imagenet")),
            "finetune": ("finetune", lambda: checkpoint.restore(init, model["backbone"])[0])}


def report(found: dict[str, Sweep], params: dict[str, Any]) -> dict[str, Any]:
    """reports/lr_find.json: each sweep's suggestion, and the `-S` values that apply both (the fine-tuning
    rate as a scale of the head's, since finetune's lr is train.lr x finetune.lr_scale)."""
    head, ft = found["head"], found["finetune"]
    scale = float(f"{ft.suggestion / head.suggestion:.2g}")
    return {"rule": RULE, **{k: params["lr_find"][k] for k in ("steps", "start_lr", "end_lr")},
            **{name: {"suggestion": float(f"{s.suggestion:.2g}"), "by": s.rule, "lr_min": s.lr_min,
                      "diverged": s.diverged, "steps_run": len(s.lrs)} for name, s in found.items()},
            "set": {"train.lr": float(f"{head.suggestion:.2g}"), "finetune.lr_scale": scale}}


def run_stage(params: dict[str, Any], split: SplitDir, init: Path, out: Path, plot_dir: Path,
              features: Path | None = None) -> dict[str, Any]:
    """The lr_find stage: both sweeps on the training split, their CSVs and figure, the report, one MLflow run.
    `features`: the split's ImageNet features (tlpipe.features), the head sweep's view when they match."""
    set_seed(params["seed"], params["device"])
    cfg, classes = params["lr_find"], split.classes()
    prep = preproc_from_params(params["model"], params["device"])
    with tracking.stage_run("lr_find", params, params["tracking"]["experiment"]) as tracker:
        train = split.data("train", classes, prep.size)
        train.features = feature_cache.load(features, params, split, ("train",)).get("train")  # head sweep only
        found = {}
        for name, (phase_name, start) in _starts(params, init, len(classes)).items():
            found[name] = sweep(start(), train, Phase.from_params(params, phase_name), prep, params["augment"],
                                cfg["steps"], cfg["start_lr"], cfg["end_lr"], params["seed"])
            plots.write_rows_csv(plot_dir / f"lr_find_{name}.csv", found[name].rows())
        settled = {n: (s.lrs[SKIP_START:], s.smoothed[SKIP_START:], s.suggestion, s.rule) for n, s in found.items()}
        plots.lr_find_png(plot_dir / "lr_find.png", settled, RULE)  # the steps the minimum is taken over
        result = report(found, params)
        write_json(out, result)
        tracker.metrics({f"{n}_suggestion": result[n]["suggestion"] for n in found})
        for f in (out, plot_dir / "lr_find.png"):
            tracker.artifact(f)
    sets = " ".join(f"-S {k}={v:g}" for k, v in result["set"].items())
    said = ", ".join(f"{n} {result[n]['suggestion']:g} ({result[n]['by']})" for n in found)
    say(f"lr_find: {said}; try: dvc exp run {sets} (rules: reports/lr_find.json)")
    return result
