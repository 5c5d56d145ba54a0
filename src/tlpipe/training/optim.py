"""Optimiser and learning-rate schedule of a training phase."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config.phases import Phase


def make_optimizer(param_groups: list[dict[str, Any]], phase: Phase) -> torch.optim.Optimizer:
    """adam | adamw | sgd over the given parameter groups, at the phase's lr and weight decay. The fused
    implementation (one kernel over every tensor; the same update): Adam's step took 4.6 instead of 11.2 ms
    for the 2.7M parameters of EfficientNet-Lite0's last 3 groups on 2 CPU cores (bench/README.md 10.)."""
    if phase.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay,
                               nesterov=phase.nesterov, fused=True)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=phase.lr, weight_decay=phase.weight_decay, fused=True)
    return torch.optim.Adam(param_groups, lr=phase.lr, weight_decay=phase.weight_decay, fused=True)


def lr_factor(phase: Phase, epoch: int) -> float:
    """Multiplier of the base lr during 0-based `epoch` for the per-epoch schedules: linear warmup over
    `warmup_epochs`, then none | step | multistep (epochs counted from the start) | cosine (over the rest)."""
    if epoch < phase.warmup_epochs:
        return (epoch + 1) / (phase.warmup_epochs + 1)
    if phase.scheduler == "step":
        return phase.gamma ** (epoch // phase.step_size)
    if phase.scheduler == "multistep":
        return phase.gamma ** sum(1 for m in phase.milestones if epoch >= m)
    if phase.scheduler == "cosine":
        span = max(phase.epochs - phase.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - phase.warmup_epochs) / span))
    return 1.0


class Schedule:
    """The lr schedule of a phase: stepped per batch (onecycle) or per epoch (plateau on val_loss, others)."""

    def __init__(self, opt: torch.optim.Optimizer, phase: Phase, steps_per_epoch: int):
        self.phase = phase
        sch = torch.optim.lr_scheduler
        if phase.scheduler == "onecycle":
            pct = phase.warmup_epochs / phase.epochs if phase.warmup_epochs else 0.3
            self.sched = sch.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                        total_steps=phase.epochs * max(steps_per_epoch, 1), pct_start=pct)
        elif phase.scheduler == "plateau":
            self.sched = sch.ReduceLROnPlateau(opt, mode="min", factor=phase.gamma, patience=phase.plateau_patience)
        else:
            self.sched = sch.LambdaLR(opt, lambda e: lr_factor(phase, e))

    def batch_done(self) -> None:
        if self.phase.scheduler == "onecycle":
            self.sched.step()

    def epoch_done(self, val_loss: float) -> None:
        if self.phase.scheduler == "plateau":
            self.sched.step(val_loss)
        elif self.phase.scheduler != "onecycle":
            self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)
