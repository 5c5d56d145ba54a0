"""One training loop for head, finetune and retrain: frozen-feature cache or frozen-prefix finetuning."""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import models
from .data.transforms import BatchAugment, normalize

EpochHook = Callable[[dict[str, float]], None]


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

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "Phase":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


@dataclass
class Data:
    """Decoded images (uint8 NCHW) with integer targets."""

    images: torch.Tensor
    targets: torch.Tensor


@dataclass
class Preproc:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: dict[str, Any]
    size: int
    device: torch.device
    channels_last: bool = False
    batch: int = 64  # images per forward pass without gradients


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    last_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)


def set_seed(seed: int, device: str = "cpu") -> None:
    """Seed Python, NumPy and torch; off the CPU, also ask torch for deterministic kernels.

    (CPU kernels are deterministic already, and the switch costs ~3 s of imports per stage.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _generator() -> torch.Generator:
    """A CPU generator derived from the global seed (set_seed), for batch order and augmentation."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _prep(x: torch.Tensor, pp: Preproc) -> torch.Tensor:
    x = normalize(x.to(pp.device), pp.mean, pp.std)  # uint8, or float in [0, 1] from BatchAugment
    return x.contiguous(memory_format=torch.channels_last) if pp.channels_last else x


@torch.no_grad()
def run_groups(net: models.Net, images: torch.Tensor, pp: Preproc, stop: int | None,
               tf=None, desc: str = "") -> torch.Tensor:
    """Eval-mode pass of groups[:stop] (pooled features when stop is None) over uint8 images."""
    net.eval()
    if pp.channels_last:
        net.to(memory_format=torch.channels_last)
    outs = []
    steps = range(0, len(images), pp.batch)
    for i in tqdm(steps, desc=desc or "features", disable=not desc or len(steps) < 4, mininterval=2.0):
        x = images[i : i + pp.batch].to(pp.device)
        x = _prep(tf(x) if tf is not None else x, pp)
        outs.append(net.features(x) if stop is None else net.forward_groups(x, 0, stop))
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def predict_logits(net: models.Net, images: torch.Tensor, pp: Preproc) -> torch.Tensor:
    feats = run_groups(net, images, pp, None)
    return net.head(feats).float().cpu()


def _optimizer(params: list[dict[str, Any]], ph: Phase) -> torch.optim.Optimizer:
    if ph.optimizer == "sgd":
        return torch.optim.SGD(params, lr=ph.lr, momentum=ph.momentum, weight_decay=ph.weight_decay)
    if ph.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=ph.lr, weight_decay=ph.weight_decay)
    return torch.optim.Adam(params, lr=ph.lr, weight_decay=ph.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, ph: Phase):
    if ph.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=ph.step_size, gamma=ph.gamma)
    if ph.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ph.epochs)
    return None


def better(acc: float, loss: float, than: FitResult) -> bool:
    """The keep rule everywhere: higher validation accuracy, ties broken by lower validation loss."""
    return acc > than.best_val_acc or (acc == than.best_val_acc and loss < than.best_val_loss)


def _keep(res: FitResult, net: nn.Module, rec: dict[str, float]) -> None:
    """Record the epoch; keep the state if it is better than the best so far."""
    res.history.append(rec)
    if better(rec["val_acc"], rec["val_loss"], res):
        res.best_epoch, res.best_val_acc, res.best_val_loss = int(rec["epoch"]), rec["val_acc"], rec["val_loss"]
        res.best_state = copy.deepcopy(net.state_dict())


def _start(res: FitResult, net: nn.Module, val_loss: float, val_acc: float) -> None:
    """The starting weights are epoch 0: an epoch is kept only if it beats them on validation."""
    res.best_epoch, res.best_val_acc, res.best_val_loss = 0, val_acc, val_loss
    res.best_state = copy.deepcopy(net.state_dict())
    res.initial = {"val_loss": val_loss, "val_acc": val_acc}


def _val_partial(net: models.Net, vprefix: torch.Tensor, vy: torch.Tensor, first: int, loss_fn) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([_suffix(net, vprefix[i : i + 256], first) for i in range(0, len(vprefix), 256)])
    return float(loss_fn(logits, vy)), float((logits.argmax(1) == vy).float().mean())


def _evaluate_head(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        logits = head(feats)
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def fit_head(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc,
             hook: EpochHook | None = None) -> FitResult:
    """Frozen backbone: cache pooled features once (K views), then train only the head on them."""
    models.freeze(net, 0)
    tf = BatchAugment(pp.augment, _generator())
    views = [run_groups(net, train.images, pp, None, tf if v else None, desc=f"features view {v}")
             for v in range(ph.feature_views)]
    feats = torch.stack(views)  # V, N, D
    vfeats = run_groups(net, valid.images, pp, None, desc="features valid")
    y, vy = train.targets.to(pp.device), valid.targets.to(pp.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
    opt = _optimizer([{"params": net.head.parameters()}], ph)
    sched = _scheduler(opt, ph)
    gen = _generator()
    res = FitResult()
    _start(res, net.head, *_evaluate_head(net.head, vfeats, vy, loss_fn))  # only the head changes: keep its state
    for epoch in range(1, ph.epochs + 1):
        net.head.train()
        order = torch.randperm(len(y), generator=gen)
        view = torch.randint(0, ph.feature_views, (len(y),), generator=gen)
        tot, correct, seen = 0.0, 0, 0
        for i in range(0, len(order), ph.batch_size):
            idx = order[i : i + ph.batch_size]
            x, t = feats[view[idx], idx], y[idx]
            logits = net.head(x)
            loss = loss_fn(logits, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == t).sum())
            seen += len(idx)
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        vl, va = _evaluate_head(net.head, vfeats, vy, loss_fn)
        rec = {"epoch": epoch, "train_loss": tot / seen, "train_acc": correct / seen, "val_loss": vl, "val_acc": va, "lr": lr}
        _keep(res, net.head, rec)
        if hook:
            hook(rec)
    res.last_state = copy.deepcopy(net.state_dict())
    res.best_state = {**res.last_state, **{f"head.{k}": v for k, v in res.best_state.items()}}
    return res


def _set_modes(net: models.Net, first: int, bn_train: bool) -> None:
    """Frozen prefix in eval mode; unfrozen groups train, their BatchNorm only if bn_train."""
    net.eval()
    for g in net.groups[first:]:
        g.train()
        if not bn_train:
            for m in g.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
    net.pool.train()
    net.head.train()


def _suffix(net: models.Net, x: torch.Tensor, first: int) -> torch.Tensor:
    return net.head(net.pool(net.forward_groups(x, first, None)))


def _prefix_source(net: models.Net, train: Data, pp: Preproc, first: int, views: int, tf: BatchAugment):
    """f(idx, gen) -> frozen-prefix activations of a batch: from K cached views (1 plain + K-1
    augmented, computed once) when views > 0, else freshly augmented and computed under no_grad."""
    if views > 0:
        cached = torch.stack([run_groups(net, train.images, pp, first, tf if v else None, desc=f"prefix view {v}")
                              for v in range(views)])
        return lambda idx, gen: cached[torch.randint(0, views, (len(idx),), generator=gen), idx]

    @torch.no_grad()
    def fresh(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:  # noqa: ARG001
        return net.forward_groups(_prep(tf(train.images[idx].to(pp.device)), pp), 0, first)

    return fresh


def fit_partial(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc,
                hook: EpochHook | None = None) -> FitResult:
    """Fine-tune the last `unfreeze_blocks` groups + head; the frozen prefix runs under no_grad."""
    first = models.freeze(net, ph.unfreeze_blocks)
    tf = BatchAugment(pp.augment, _generator())
    vprefix = run_groups(net, valid.images, pp, first)  # constant: frozen prefix, no augmentation
    prefix = _prefix_source(net, train, pp, first, ph.prefix_views, tf)
    y, vy = train.targets.to(pp.device), valid.targets.to(pp.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
    backbone = [p for g in net.groups[first:] for p in g.parameters()]
    opt = _optimizer([{"params": net.head.parameters()},
                      {"params": backbone, "lr": ph.lr * ph.backbone_lr_mult}], ph)
    sched = _scheduler(opt, ph)
    gen = _generator()
    res = FitResult()
    _start(res, net, *_val_partial(net, vprefix, vy, first, loss_fn))
    for epoch in range(1, ph.epochs + 1):
        order = torch.randperm(len(y), generator=gen)
        tot, correct, seen = 0.0, 0, 0
        steps = range(0, len(order), ph.batch_size)
        _set_modes(net, first, ph.bn_train)
        for i in tqdm(steps, desc=f"epoch {epoch}/{ph.epochs}", mininterval=5.0, leave=False):
            idx = order[i : i + ph.batch_size]
            logits = _suffix(net, prefix(idx, gen), first)
            loss = loss_fn(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            seen += len(idx)
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        vl, va = _val_partial(net, vprefix, vy, first, loss_fn)
        rec = {"epoch": epoch, "train_loss": tot / seen, "train_acc": correct / seen, "val_loss": vl, "val_acc": va, "lr": lr}
        _keep(res, net, rec)
        if hook:
            hook(rec)
    res.last_state = copy.deepcopy(net.state_dict())
    return res


def fit(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc, hook: EpochHook | None = None) -> FitResult:
    """Train per `ph`: head only on cached features when unfreeze_blocks is 0, else partial fine-tuning."""
    net.to(pp.device)
    if pp.channels_last:
        net.to(memory_format=torch.channels_last)
    if ph.unfreeze_blocks == 0:
        return fit_head(net, train, valid, ph, pp, hook)
    return fit_partial(net, train, valid, ph, pp, hook)
