"""One training loop for every phase: head-only on cached features, or partial fine-tuning on a frozen prefix.

The two modes differ only in what a `_Mode` supplies (inputs of a batch, logits, validation, which
weights train and which are kept); setup, epochs, keep rule, early stopping and resume files are shared."""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .. import models, progress
from ..atomic import atomic_path
from ..config.phases import Phase
from ..data.splitdir import Data
from ..data.transforms import Augment, make_augment
from ..inference import Preproc, prepare, run_groups, to_channels_last
from .mixing import Mixer
from .optim import Schedule, make_optimizer
from .resume import RESUME_FORMAT, Resume, fingerprint, read, subset

EpochHook = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    last_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)


def better(acc: float, loss: float, than: FitResult) -> bool:
    """The keep rule everywhere: higher validation accuracy, ties broken by lower validation loss."""
    return acc > than.best_val_acc or (acc == than.best_val_acc and loss < than.best_val_loss)


def _generator() -> torch.Generator:
    """A CPU generator derived from the global seed (set_seed), for batch order and augmentation."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))


def set_modes(net: models.Net, first: int, bn_train: bool) -> None:
    """Frozen prefix in eval mode; unfrozen groups train, their BatchNorm only if bn_train."""
    net.eval()
    for g in net.groups[first:]:
        g.train()
        if not bn_train:
            for m in g.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
    net.pool.train()
    net.dropout.train()
    net.head.train()


def _accuracy_loss(logits: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
    return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


class _Mode(ABC):
    """What differs between head-only training and partial fine-tuning. Subclasses set `keep` (whose
    state is kept as best), `keys` (state keys of net that training changes, stored by a resume file),
    `best_keys` (the same, relative to `keep`) and `trainable` (the parameters that train)."""

    kind = ""
    keep: nn.Module
    keys: tuple[str, ...]
    best_keys: tuple[str, ...]
    trainable: list[nn.Parameter]

    def __init__(self, net: models.Net, ph: Phase):
        self.net, self.ph = net, ph
        self.first = models.freeze(net, ph.unfreeze_blocks)

    @abstractmethod
    def build(self, train: Data, valid: Data, pp: Preproc, tf: Augment) -> None:
        """Compute what stays fixed through the phase (cached features or prefix activations)."""

    @abstractmethod
    def inputs(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The trainable part's input for the images `idx` of the training split."""

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable part's output for its input `x`."""

    @abstractmethod
    def validate(self, vy: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) on the validation split."""

    @abstractmethod
    def train_mode(self) -> None:
        """Put the trainable modules in training mode, the frozen ones in eval mode."""

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups."""

    def finish(self, res: FitResult) -> None:
        res.last_state = copy.deepcopy(self.net.state_dict())


class _HeadMode(_Mode):
    """Frozen backbone: pooled features cached once (K views), then only the head trains on them."""

    kind = "head"

    def __init__(self, net: models.Net, ph: Phase):
        super().__init__(net, ph)
        self.keep, self.keys, self.best_keys = net.head, ("head.",), ("",)
        self.trainable = list(net.head.parameters())

    def build(self, train: Data, valid: Data, pp: Preproc, tf: Augment) -> None:
        views = [run_groups(self.net, train.images, pp, None, tf if v else None, desc=f"features view {v}")
                 for v in range(self.ph.feature_views)]
        self.feats = torch.stack(views)  # V, N, D
        self.vfeats = run_groups(self.net, valid.images, pp, None, desc="features valid")

    def inputs(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.feats[torch.randint(0, self.ph.feature_views, (len(idx),), generator=gen), idx]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.dropout(x))

    def validate(self, vy: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
        self.net.head.eval()
        with torch.no_grad():
            return _accuracy_loss(self.net.head(self.vfeats), vy, loss_fn)

    def train_mode(self) -> None:
        self.net.head.train()
        self.net.dropout.train()

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.net.head.parameters()}]

    def finish(self, res: FitResult) -> None:
        super().finish(res)
        res.best_state = {**res.last_state, **{f"head.{k}": v for k, v in res.best_state.items()}}


class _PartialMode(_Mode):
    """The last `unfreeze_blocks` groups + head train; the frozen prefix runs under no_grad in eval mode."""

    kind = "partial"

    def __init__(self, net: models.Net, ph: Phase):
        super().__init__(net, ph)
        self.keep = net
        self.keys = self.best_keys = tuple(f"groups.{i}." for i in range(self.first, len(net.groups))) + (
            "pool.", "head.")
        self.backbone = [p for g in net.groups[self.first:] for p in g.parameters()] + list(net.pool.parameters())
        self.trainable = self.backbone + list(net.head.parameters())

    def build(self, train: Data, valid: Data, pp: Preproc, tf: Augment) -> None:
        self.vprefix = run_groups(self.net, valid.images, pp, self.first)  # constant: frozen, no augmentation
        views = self.ph.prefix_views
        if views > 0:  # K cached views: 1 plain + K-1 augmented, computed once
            self.cached = torch.stack([run_groups(self.net, train.images, pp, self.first, tf if v else None,
                                                  desc=f"prefix view {v}") for v in range(views)])
        self.train_images, self.pp, self.tf = train.images, pp, tf

    @torch.no_grad()
    def inputs(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.ph.prefix_views > 0:
            return self.cached[torch.randint(0, self.ph.prefix_views, (len(idx),), generator=gen), idx]
        x = prepare(self.tf(self.train_images[idx].to(self.pp.device)), self.pp)  # fresh augmentation
        return self.net.forward_groups(x, 0, self.first)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.head(net.dropout(net.pool(net.forward_groups(x, self.first, None))))

    def validate(self, vy: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
        self.net.eval()
        with torch.no_grad():
            logits = torch.cat([self.logits(self.vprefix[i : i + 256]) for i in range(0, len(self.vprefix), 256)])
        return _accuracy_loss(logits, vy, loss_fn)

    def train_mode(self) -> None:
        set_modes(self.net, self.first, self.ph.bn_train)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.net.head.parameters()},
                {"params": self.backbone, "lr": self.ph.lr * self.ph.backbone_lr_mult}]


@dataclass
class _Loop:
    """The state one phase's epochs share, and its resume file."""

    mode: _Mode
    gens: list[torch.Generator]  # every generator the loop draws from (batch order, augmentation)
    mixer: Mixer | None
    fp: str
    resume: Resume | None
    res: FitResult = field(default_factory=FitResult)
    vy: torch.Tensor | None = None  # validation targets on the device

    def save(self, epoch: int, done: bool, opt: torch.optim.Optimizer, sched: Schedule) -> None:
        if self.resume is None or (not done and epoch % self.resume.every):
            return
        res = self.res
        payload = {
            "format": RESUME_FORMAT, "fingerprint": self.fp, "epoch": epoch, "done": done,
            "state": subset(self.mode.net.state_dict(), self.mode.keys), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gens": [g.get_state() for g in self.gens],
            "torch_rng": torch.get_rng_state(),
            "mixer": json.dumps(self.mixer.rng.bit_generator.state) if self.mixer else "",
            "history": res.history, "initial": res.initial, "best_epoch": res.best_epoch,
            "best_val_acc": res.best_val_acc, "best_val_loss": res.best_val_loss,
            "best_state": subset(res.best_state, self.mode.best_keys),
        }
        with atomic_path(self.resume.path) as tmp:
            with open(tmp, "wb") as f:  # file object: the bytes do not depend on the temp name
                torch.save(payload, f)

    def restore(self, saved: dict[str, Any], opt: torch.optim.Optimizer | None, sched: Schedule | None,
                hook: EpochHook | None) -> None:
        self.mode.net.load_state_dict(saved["state"], strict=False)
        if opt is not None and sched is not None:
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        for g, st in zip(self.gens, saved["gens"]):
            g.set_state(st)
        torch.set_rng_state(saved["torch_rng"])
        if self.mixer:
            self.mixer.rng.bit_generator.state = json.loads(saved["mixer"])
        res = self.res
        res.history, res.initial = list(saved["history"]), dict(saved["initial"])
        res.best_epoch, res.best_val_acc, res.best_val_loss = saved["best_epoch"], saved["best_val_acc"], saved["best_val_loss"]
        res.best_state = {**copy.deepcopy(self.mode.keep.state_dict()), **saved["best_state"]}
        for rec in res.history:
            if hook:
                hook(rec)

    def start(self, val_loss: float, val_acc: float) -> None:
        """The starting weights are epoch 0: an epoch is kept only if it beats them on validation."""
        res = self.res
        res.best_epoch, res.best_val_acc, res.best_val_loss = 0, val_acc, val_loss
        res.best_state = copy.deepcopy(self.mode.keep.state_dict())
        res.initial = {"val_loss": val_loss, "val_acc": val_acc}

    def keep(self, rec: dict[str, float]) -> None:
        """Record the epoch; keep the state if it is better than the best so far."""
        res = self.res
        res.history.append(rec)
        if better(rec["val_acc"], rec["val_loss"], res):
            res.best_epoch, res.best_val_acc, res.best_val_loss = int(rec["epoch"]), rec["val_acc"], rec["val_loss"]
            res.best_state = copy.deepcopy(self.mode.keep.state_dict())


def _train_step(mode: _Mode, x: torch.Tensor, t: torch.Tensor, loss_fn: nn.Module, opt: torch.optim.Optimizer,
                mixer: Mixer | None) -> tuple[float, float]:
    """One optimiser step (with optional mixup/cutmix and gradient clipping); returns (loss sum, correct)."""
    if mixer is not None:
        x, ta, tb, lam = mixer(x, t)
        logits = mode.logits(x)
        loss = lam * loss_fn(logits, ta) + (1.0 - lam) * loss_fn(logits, tb)
        pred = logits.argmax(1)
        correct = lam * float((pred == ta).sum()) + (1.0 - lam) * float((pred == tb).sum())
    else:
        logits = mode.logits(x)
        loss = loss_fn(logits, t)
        correct = float((logits.argmax(1) == t).sum())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if mode.ph.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(mode.trainable, mode.ph.grad_clip)
    opt.step()
    return loss.item() * len(t), correct


def _epoch(loop: _Loop, epoch: int, y: torch.Tensor, loss_fn: nn.Module, opt: torch.optim.Optimizer,
           sched: Schedule) -> dict[str, float]:
    """One pass over the training set in a seeded order; the epoch's record after validation."""
    mode, ph = loop.mode, loop.mode.ph
    steps = range(0, len(y), ph.batch_size)
    order = torch.randperm(len(y), generator=loop.gens[0])
    tot, correct = 0.0, 0.0
    mode.train_mode()
    lr = opt.param_groups[0]["lr"]
    for i in progress.bar(steps, f"epoch {epoch}/{ph.epochs}", unit="batches", leave=False, summary=False):
        idx = order[i : i + ph.batch_size]
        l_sum, c = _train_step(mode, mode.inputs(idx, loop.gens[0]), y[idx], loss_fn, opt, loop.mixer)
        tot, correct = tot + l_sum, correct + c
        sched.batch_done()
    vl, va = mode.validate(loop.vy, loss_fn)
    sched.epoch_done(vl)
    return {"epoch": epoch, "train_loss": tot / len(y), "train_acc": correct / len(y), "val_loss": vl,
            "val_acc": va, "lr": lr}


def _epochs(loop: _Loop, saved: dict[str, Any] | None, y: torch.Tensor, hook: EpochHook | None) -> None:
    """Epochs from the start (or the resume file), keep rule, early stopping, resume files."""
    ph = loop.mode.ph
    loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
    opt = make_optimizer(loop.mode.param_groups(), ph)
    sched = Schedule(opt, ph, len(range(0, len(y), ph.batch_size)))
    if saved:
        loop.restore(saved, opt, sched, hook)
    else:
        loop.start(*loop.mode.validate(loop.vy, loss_fn))
    for epoch in range(int(saved["epoch"]) + 1 if saved else 1, ph.epochs + 1):
        rec = _epoch(loop, epoch, y, loss_fn, opt, sched)
        loop.keep(rec)
        if hook:
            hook(rec)
        stop = ph.early_stopping > 0 and epoch - loop.res.best_epoch >= ph.early_stopping
        loop.save(epoch, stop or epoch == ph.epochs, opt, sched)
        if stop:
            print(f"early stopping after epoch {epoch}: no better validation for {ph.early_stopping} epochs",
                  flush=True)
            break


def fit(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc, augment: dict[str, Any],
        hook: EpochHook | None = None, resume: Resume | None = None) -> FitResult:
    """Train per `ph`: head only on cached features when unfreeze_blocks is 0, else partial fine-tuning.
    `augment` is the params section of that name; `resume` where progress is saved (None: not saved)."""
    net.to(pp.device)
    if pp.channels_last:
        to_channels_last(net)
    mode = (_HeadMode if ph.unfreeze_blocks == 0 else _PartialMode)(net, ph)
    fp = fingerprint(mode.kind, ph, pp, augment, net.state_dict(), train.images, train.targets, valid.images,
                     valid.targets, torch.get_rng_state())
    tf = make_augment(augment, _generator(), pp.size)
    gen = _generator()
    mixer = Mixer(ph, int(torch.randint(0, 2**31 - 1, (1,)).item())) if ph.mixup_alpha or ph.cutmix_alpha else None
    loop, saved = _Loop(mode, [gen, tf.gen], mixer, fp, resume), read(resume, fp)
    if saved and saved.get("done"):  # the phase had finished: restore its end state, recompute nothing
        loop.restore(saved, None, None, hook)
    else:
        mode.build(train, valid, pp, tf)
        loop.vy = valid.targets.to(pp.device)
        _epochs(loop, saved, train.targets.to(pp.device), hook)
    mode.finish(loop.res)
    return loop.res
