"""One training loop for every phase: head-only on cached features, or partial fine-tuning on a frozen prefix.

The two modes differ only in what a `Mode` supplies (inputs of a batch, logits, validation, which
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
from ..inference import Preproc, prepare, run_groups, run_rest, to_channels_last, to_device
from .mixing import Mixer
from . import parallel
from .optim import Schedule, make_optimizer
from .resume import RESUME_FORMAT, Resume, fingerprint, read, subset

EpochHook = Callable[[dict[str, float]], None]


class PrefixMemo:
    """Plain-image activations of groups[:tap] that a head phase computes on its way to the pooled features,
    kept for the partial phase after it whose first unfrozen group is `tap` (retrain: the same frozen prefix
    over every known and unknown image, computed once instead of twice). A stored prefix is used only while
    those groups hold the weights it was computed with (compared exactly)."""

    def __init__(self, tap: int):
        self.tap = tap
        self.store: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}

    def _weights(self, net: models.Net) -> dict[str, torch.Tensor]:
        return nn.Sequential(*net.groups[: self.tap]).state_dict()

    def put(self, split: str, net: models.Net, prefix: torch.Tensor) -> None:
        self.store[split] = ({k: v.detach().clone() for k, v in self._weights(net).items()}, prefix)

    def get(self, split: str, net: models.Net, first: int) -> torch.Tensor | None:
        if first != self.tap or split not in self.store:
            return None
        saved, prefix = self.store[split]
        now = self._weights(net)
        return prefix if saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved) else None


def memo_for(phases: list[Phase], n_groups: int) -> list[PrefixMemo | None]:
    """Per phase, the memo it fills (a head phase followed by a partial phase with a cached prefix) or reads."""
    memos: list[PrefixMemo | None] = [None] * len(phases)
    for i, (a, b) in enumerate(zip(phases, phases[1:])):
        if a.unfreeze_blocks == 0 and b.unfreeze_blocks > 0 and b.prefix_views > 0:
            memos[i] = memos[i + 1] = PrefixMemo(n_groups - b.unfreeze_blocks)
    return memos


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    last_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)


def better(acc: float, loss: float, than: FitResult, by: str = "val_acc") -> bool:
    """The keep rule everywhere (train.keep): `val_acc`, higher validation accuracy with ties broken by lower
    validation loss; `val_loss`, lower validation loss (a change of an image or two in a small validation split
    does not decide it)."""
    if by == "val_loss":
        return loss < than.best_val_loss
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
    logits = logits.float()  # autocast logits: the loss in fp32 (a no-op on fp32 logits)
    return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


class Mode(ABC):
    """What differs between head-only training and partial fine-tuning. Subclasses set `keep` (whose
    state is kept as best), `keys` (state keys of net that training changes, stored by a resume file),
    `best_keys` (the same, relative to `keep`) and `trainable` (the parameters that train)."""

    kind = ""
    keep: nn.Module
    keys: tuple[str, ...]
    best_keys: tuple[str, ...]
    trainable: list[nn.Parameter]

    def __init__(self, net: models.Net, phase: Phase, memo: PrefixMemo | None = None):
        self.net, self.phase, self.memo = net, phase, memo
        self.first = models.freeze(net, phase.unfreeze_blocks)

    @abstractmethod
    def build(self, train: Data, valid: Data, prep: Preproc, tf: Augment) -> None:
        """Compute what stays fixed through the phase (cached features or prefix activations)."""

    @abstractmethod
    def inputs(self, idx: torch.Tensor, gen: torch.Generator, pick: slice = slice(None)) -> torch.Tensor:
        """The trainable part's input for the images idx[pick] of the training split (`idx` the global batch:
        its random draws from `gen` are made for all of it, so every rank's generator stays alike)."""

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


class HeadMode(Mode):
    """Frozen backbone: pooled features cached once (K views), then only the head trains on them."""

    kind = "head"

    def __init__(self, net: models.Net, phase: Phase, memo: PrefixMemo | None = None):
        super().__init__(net, phase, memo)
        self.keep, self.keys, self.best_keys = net.head, ("head.",), ("",)
        self.trainable = list(net.head.parameters())

    def _plain(self, data: Data, split: str, prep: Preproc, desc: str) -> torch.Tensor:
        """Pooled features of the plain images: `data.features` when given (the same pass, computed earlier by
        the audit stage; see tlpipe.features); else computed, through the memo's prefix when there is one."""
        if data.features is not None:
            return data.features.to(prep.device)
        if self.memo is None:
            return run_groups(self.net, data.images, prep, None, desc=desc)
        prefix = run_groups(self.net, data.images, prep, self.memo.tap, desc=desc)
        self.memo.put(split, self.net, prefix)
        return run_rest(self.net, prefix, self.memo.tap, prep.batch)

    def build(self, train: Data, valid: Data, prep: Preproc, tf: Augment) -> None:
        """View 0 is the plain images (`_plain`), the others augmented."""
        views = [self._plain(train, "train", prep, "features view 0") if v == 0 else
                 run_groups(self.net, train.images, prep, None, tf, desc=f"features view {v}")
                 for v in range(self.phase.feature_views)]
        self.feats = torch.stack(views)  # V, N, D
        self.vfeats = self._plain(valid, "valid", prep, "features valid")

    def inputs(self, idx: torch.Tensor, gen: torch.Generator, pick: slice = slice(None)) -> torch.Tensor:
        return self.feats[torch.randint(0, self.phase.feature_views, (len(idx),), generator=gen)[pick], idx[pick]]

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


class PartialMode(Mode):
    """The last `unfreeze_blocks` groups + head train; the frozen prefix runs under no_grad in eval mode."""

    kind = "partial"

    def __init__(self, net: models.Net, phase: Phase, memo: PrefixMemo | None = None):
        super().__init__(net, phase, memo)
        self.keep = net
        self.keys = self.best_keys = tuple(f"groups.{i}." for i in range(self.first, len(net.groups))) + (
            "pool.", "head.")
        self.backbone = [p for g in net.groups[self.first:] for p in g.parameters()] + list(net.pool.parameters())
        self.trainable = self.backbone + list(net.head.parameters())

    def _prefix(self, data: Data, split: str, prep: Preproc, tf: Augment | None, desc: str) -> torch.Tensor:
        """Frozen-prefix activations; the plain ones from the memo when the head phase before left them."""
        hit = self.memo.get(split, self.net, self.first) if self.memo is not None and tf is None else None
        return hit if hit is not None else run_groups(self.net, data.images, prep, self.first, tf, desc=desc)

    def build(self, train: Data, valid: Data, prep: Preproc, tf: Augment) -> None:
        self.vprefix = self._prefix(valid, "valid", prep, None, "")  # constant: frozen, no augmentation
        views = self.phase.prefix_views
        if views > 0:  # K cached views: 1 plain + K-1 augmented, computed once
            self.cached = torch.stack([self._prefix(train, "train", prep, tf if v else None, f"prefix view {v}")
                                       for v in range(views)])
        self.train_images, self.prep, self.tf = train.images, prep, tf

    @torch.no_grad()
    def inputs(self, idx: torch.Tensor, gen: torch.Generator, pick: slice = slice(None)) -> torch.Tensor:
        if self.phase.prefix_views > 0:
            return self.cached[torch.randint(0, self.phase.prefix_views, (len(idx),), generator=gen)[pick], idx[pick]]
        x = prepare(self.tf(to_device(self.train_images[idx[pick]], self.prep.device)), self.prep)  # fresh augmentation
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
        set_modes(self.net, self.first, self.phase.bn_train)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.net.head.parameters()},
                {"params": self.backbone, "lr": self.phase.lr * self.phase.backbone_lr_mult}]


def create_mode(net: models.Net, phase: Phase, memo: PrefixMemo | None = None) -> Mode:
    """Head only on cached features when the phase unfreezes no block, else partial fine-tuning."""
    return (HeadMode if phase.unfreeze_blocks == 0 else PartialMode)(net, phase, memo)


@dataclass
class _Loop:
    """The state one phase's epochs share, and its resume file."""

    mode: Mode
    gens: list[torch.Generator]  # every generator the loop draws from (batch order, augmentation)
    mixer: Mixer | None
    fp: str
    resume: Resume | None
    res: FitResult = field(default_factory=FitResult)
    vy: torch.Tensor | None = None  # validation targets on the device
    amp: parallel.Amp = field(default_factory=parallel.Amp)

    def validate(self, loss_fn: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) on the validation split, under autocast; rank 0's scores on every rank."""
        with self.amp.autocast():
            vl, va = self.mode.validate(self.vy, loss_fn)
        return parallel.same(vl, va, device=self.amp.device)

    def save(self, epoch: int, done: bool, opt: torch.optim.Optimizer, sched: Schedule) -> None:
        if self.resume is None or not parallel.is_main() or (not done and epoch % self.resume.every):
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
            **({"scaler": self.amp.scaler.state_dict()} if self.amp.scaler is not None else {}),
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
        if self.amp.scaler is not None and "scaler" in saved:
            self.amp.scaler.load_state_dict(saved["scaler"])
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
        if better(rec["val_acc"], rec["val_loss"], res, self.mode.phase.keep):
            res.best_epoch, res.best_val_acc, res.best_val_loss = int(rec["epoch"]), rec["val_acc"], rec["val_loss"]
            res.best_state = copy.deepcopy(self.mode.keep.state_dict())


def _loss(mode: Mode, x: torch.Tensor, t: torch.Tensor, loss_fn: nn.Module,
          mixer: Mixer | None) -> tuple[torch.Tensor, float]:
    """The mean loss of a batch (with optional mixup/cutmix) and its number of correct predictions."""
    if mixer is not None:
        x, ta, tb, lam = mixer(x, t)
        logits = mode.logits(x).float()  # a no-op in fp32; fp32 logits and loss under autocast
        loss = lam * loss_fn(logits, ta) + (1.0 - lam) * loss_fn(logits, tb)
        pred = logits.argmax(1)
        return loss, lam * float((pred == ta).sum()) + (1.0 - lam) * float((pred == tb).sum())
    logits = mode.logits(x).float()
    return loss_fn(logits, t), float((logits.argmax(1) == t).sum())


def _train_step(mode: Mode, x: torch.Tensor, t: torch.Tensor, loss_fn: nn.Module, opt: torch.optim.Optimizer,
                mixer: Mixer | None, amp: parallel.Amp, n_batch: int) -> tuple[float, float]:
    """One optimiser step (optional mixup/cutmix, gradient clipping); returns (loss sum, correct) of `t`.
    Under torchrun `t` is this rank's share of a batch of `n_batch`: its loss is weighted by that share and
    the gradients are summed over ranks, so the step is the one-process step of the whole batch."""
    opt.zero_grad(set_to_none=True)
    l_sum, correct = 0.0, 0.0
    if len(t):
        with amp.autocast():
            loss, correct = _loss(mode, x, t, loss_fn, mixer)
        l_sum = loss.item() * len(t)
        amp.backward(loss if len(t) == n_batch else loss * (len(t) / n_batch))
    parallel.all_reduce_grads(mode.trainable)
    amp.step(opt, mode.trainable, mode.phase.grad_clip)
    return l_sum, correct


def _epoch(loop: _Loop, epoch: int, y: torch.Tensor, loss_fn: nn.Module, opt: torch.optim.Optimizer,
           sched: Schedule) -> dict[str, float]:
    """One pass over the training set in a seeded order; the epoch's record after validation."""
    mode, phase = loop.mode, loop.mode.phase
    steps = range(0, len(y), phase.batch_size)
    order = torch.randperm(len(y), generator=loop.gens[0])
    tot, correct = 0.0, 0.0
    mode.train_mode()
    lr = opt.param_groups[0]["lr"]
    pick = parallel.shard()  # this rank's part of each batch (all of it in one process)
    for i in progress.bar(steps, f"epoch {epoch}/{phase.epochs}", unit="batches", leave=False, summary=False):
        idx = order[i : i + phase.batch_size]
        with loop.amp.autocast():
            x = mode.inputs(idx, loop.gens[0], pick)
        l_sum, c = _train_step(mode, x, y[idx[pick]], loss_fn, opt, loop.mixer, loop.amp, len(idx))
        tot, correct = tot + l_sum, correct + c
        sched.batch_done()
    tot, correct = parallel.sums(tot, correct, device=loop.amp.device)
    parallel.sync_buffers(mode.keep)
    vl, va = loop.validate(loss_fn)
    sched.epoch_done(vl)
    return {"epoch": epoch, "train_loss": tot / len(y), "train_acc": correct / len(y), "val_loss": vl,
            "val_acc": va, "lr": lr}


def _epochs(loop: _Loop, saved: dict[str, Any] | None, y: torch.Tensor, hook: EpochHook | None) -> None:
    """Epochs from the start (or the resume file), keep rule, early stopping, resume files."""
    phase = loop.mode.phase
    loss_fn = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing)
    opt = make_optimizer(loop.mode.param_groups(), phase)
    sched = Schedule(opt, phase, len(range(0, len(y), phase.batch_size)))
    if saved:
        loop.restore(saved, opt, sched, hook)
    else:
        loop.start(*loop.validate(loss_fn))
    for epoch in range(int(saved["epoch"]) + 1 if saved else 1, phase.epochs + 1):
        rec = _epoch(loop, epoch, y, loss_fn, opt, sched)
        loop.keep(rec)
        if hook:
            hook(rec)
        stop = phase.early_stopping > 0 and epoch - loop.res.best_epoch >= phase.early_stopping
        loop.save(epoch, stop or epoch == phase.epochs, opt, sched)
        if stop:
            print(f"early stopping after epoch {epoch}: no better validation for {phase.early_stopping} epochs",
                  flush=True)
            break


def fit(net: models.Net, train: Data, valid: Data, phase: Phase, prep: Preproc, augment: dict[str, Any],
        hook: EpochHook | None = None, resume: Resume | None = None, precision: str = "fp32",
        memo: PrefixMemo | None = None) -> FitResult:
    """Train per `phase`: head only on cached features when unfreeze_blocks is 0, else partial fine-tuning.
    `augment` is the params section of that name; `resume` where progress is saved (None: not saved);
    `precision` train.precision (see parallel); `memo` shares a plain prefix between phases (memo_for).
    Under torchrun every rank calls it alike (see parallel)."""
    amp = parallel.Amp(precision, prep.device)
    net.to(prep.device)
    if prep.channels_last:
        to_channels_last(net)
    mode = create_mode(net, phase, memo)
    parallel.sync_rng()
    extra = ([precision] if precision != "fp32" else []) + ([parallel.world()] if parallel.world() > 1 else [])
    fp = fingerprint(mode.kind, phase, prep, augment, net.state_dict(), train.images, train.targets, valid.images,
                     valid.targets, torch.get_rng_state(), *extra)
    tf = make_augment(augment, _generator(), prep.size)
    gen = _generator()
    mixer = Mixer(phase, int(torch.randint(0, 2**31 - 1, (1,)).item())) if phase.mixup_alpha or phase.cutmix_alpha else None
    loop = _Loop(mode, [gen, tf.gen], mixer, fp, resume, amp=amp)
    saved = parallel.from_main(read(resume, fp) if parallel.is_main() else None)
    if saved and saved.get("done"):  # the phase had finished: restore its end state, recompute nothing
        loop.restore(saved, None, None, hook)
    else:
        with amp.autocast():
            mode.build(train, valid, prep, tf)
        loop.vy = valid.targets.to(prep.device)
        _epochs(loop, saved, train.targets.to(prep.device), hook)
    mode.finish(loop.res)
    return loop.res
