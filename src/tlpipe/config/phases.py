"""One training phase's settings (train_head, finetune, retrain.head, retrain.finetune) as a typed record.

The one place the `train` section and a phase section merge: a phase's settings are `train`'s shared keys
overlaid with the phase section's own keys, and its learning rate is the phase's `lr` when the section sets
one, else `train.lr × <phase>.lr_scale` (lr_scale defaults to 1)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

PHASES = ("train_head", "finetune", "retrain.head", "retrain.finetune")  # the params sections of the phases
KEEP_RULES = ("val_acc", "val_loss")  # train.keep: the epoch a phase keeps (training.loop.better)


@dataclass(frozen=True)
class Phase:
    """One training phase, resolved from params (see `phase_settings`)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    label_smoothing: float
    scheduler: str
    step_size: int
    gamma: float
    feature_views: int = 1
    unfreeze_blocks: int = 0
    prefix_views: int = 0
    bn_train: bool = False
    backbone_lr_mult: float = 1.0
    nesterov: bool = False
    milestones: tuple[int, ...] = ()
    warmup_epochs: int = 0
    plateau_patience: int = 2
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    early_stopping: int = 0
    grad_clip: float = 0.0
    keep: str = "val_acc"

    @classmethod
    def from_params(cls, params: dict[str, Any], name: str) -> "Phase":
        """The phase `name` (one of PHASES) of a whole params mapping."""
        kw = phase_settings(params, name)
        kw["milestones"] = tuple(int(m) for m in kw.get("milestones", ()))
        return cls(**kw)


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The params section of a dotted name ("retrain.head" -> params["retrain"]["head"])."""
    node = params
    for part in name.split("."):
        node = node[part]
    return node


def scaled_lr(lr: float, scale: float) -> float:
    """lr × scale as the decimal numbers written in params.yaml multiply (0.001 × 0.1 = 0.0001 exactly)."""
    return lr if scale == 1 else float(Decimal(repr(lr)) * Decimal(repr(scale)))


def phase_settings(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The settings of phase `name`: `train`'s phase keys overlaid with the phase section (lr_scale dropped),
    lr = the section's own lr, else train.lr × the section's lr_scale (default 1)."""
    keys = {f.name for f in fields(Phase)}
    own, shared = section(params, name), params["train"]
    merged = {k: v for k, v in shared.items() if k in keys}
    merged.update({k: v for k, v in own.items() if k != "lr_scale"})
    if "lr" not in own:
        merged["lr"] = scaled_lr(shared["lr"], own.get("lr_scale", 1))
    return merged
