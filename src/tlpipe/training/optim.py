"""Optimiser and learning-rate schedule of a training phase."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config.phases import Phase


def make_optimizer(param_groups: list[dict[str, Any]], ph: Phase) -> torch.optim.Optimizer:
    """adam | adamw | sgd over the given parameter groups, at the phase's lr and weight decay."""
    if ph.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=ph.lr, momentum=ph.momentum, weight_decay=ph.weight_decay,
                               nesterov=ph.nesterov)
    if ph.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=ph.lr, weight_decay=ph.weight_decay)
    return torch.optim.Adam(param_groups, lr=ph.lr, weight_decay=ph.weight_decay)


def lr_factor(ph: Phase, epoch: int) -> float:
    """Multiplier of the base lr during 0-based `epoch` for the per-epoch schedules: linear warmup over
    `warmup_epochs`, then none | step | multistep (epochs counted from the start) | cosine (over the rest)."""
    if epoch < ph.warmup_epochs:
        return (epoch + 1) / (ph.warmup_epochs + 1)
    if ph.scheduler == "step":
        return ph.gamma ** (epoch // ph.step_size)
    if ph.scheduler == "multistep":
        return ph.gamma ** sum(1 for m in ph.milestones if epoch >= m)
    if ph.scheduler == "cosine":
        span = max(ph.epochs - ph.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - ph.warmup_epochs) / span))
    return 1.0


class Schedule:
    """The lr schedule of a phase: stepped per batch (onecycle) or per epoch (plateau on val_loss, others)."""

    def __init__(self, opt: torch.optim.Optimizer, ph: Phase, steps_per_epoch: int):
        self.ph = ph
        sch = torch.optim.lr_scheduler
        if ph.scheduler == "onecycle":
            pct = ph.warmup_epochs / ph.epochs if ph.warmup_epochs else 0.3
            self.sched = sch.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                        total_steps=ph.epochs * max(steps_per_epoch, 1), pct_start=pct)
        elif ph.scheduler == "plateau":
            self.sched = sch.ReduceLROnPlateau(opt, mode="min", factor=ph.gamma, patience=ph.plateau_patience)
        else:
            self.sched = sch.LambdaLR(opt, lambda e: lr_factor(ph, e))

    def batch_done(self) -> None:
        if self.ph.scheduler == "onecycle":
            self.sched.step()

    def epoch_done(self, val_loss: float) -> None:
        if self.ph.scheduler == "plateau":
            self.sched.step(val_loss)
        elif self.ph.scheduler != "onecycle":
            self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)
