"""One training phase's settings (train_head, finetune, retrain.head, retrain.finetune) as a typed record."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Phase:
    """One training phase, read from a params section (train_head, finetune, retrain.head, ...)."""

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

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "Phase":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in section.items() if k in names}
        if "milestones" in kw:
            kw["milestones"] = tuple(int(m) for m in kw["milestones"])
        return cls(**kw)
