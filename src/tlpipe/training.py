"""One training loop for head, finetune and retrain: frozen-feature cache or frozen-prefix finetuning."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from . import models, progress
from .atomic import atomic_path
from .data.transforms import Augment, make_augment, normalize

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


def to_channels_last(net: nn.Module) -> None:
    """NHWC weights for NHWC inputs; a no-op (no weight copies) when they already are."""
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters()):
        net.to(memory_format=torch.channels_last)


def _prep(x: torch.Tensor, pp: Preproc) -> torch.Tensor:
    x = normalize(x.to(pp.device), pp.mean, pp.std)  # uint8, or float in [0, 1] from BatchAugment
    return x.contiguous(memory_format=torch.channels_last) if pp.channels_last else x


@torch.no_grad()
def run_groups(net: models.Net, images: torch.Tensor, pp: Preproc, stop: int | None,
               tf=None, desc: str = "") -> torch.Tensor:
    """Eval-mode pass of groups[:stop] (pooled features when stop is None) over uint8 images."""
    net.eval()
    if pp.channels_last:
        to_channels_last(net)
    outs = []
    steps = range(0, len(images), pp.batch)
    for i in (progress.bar(steps, desc, unit="batches") if desc and len(steps) >= 4 else steps):
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
        return torch.optim.SGD(params, lr=ph.lr, momentum=ph.momentum, weight_decay=ph.weight_decay,
                               nesterov=ph.nesterov)
    if ph.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=ph.lr, weight_decay=ph.weight_decay)
    return torch.optim.Adam(params, lr=ph.lr, weight_decay=ph.weight_decay)


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


class Mixer:
    """Mixup / CutMix on the batch entering the trainable part (cached features or prefix activations).

    When both alphas are set, each batch picks one of the two at random. CutMix needs a spatial map; on
    pooled features (head phases) it mixes like mixup with the cutmix alpha."""

    def __init__(self, ph: Phase, seed: int):
        self.mixup, self.cutmix = ph.mixup_alpha, ph.cutmix_alpha
        self.rng = np.random.default_rng(seed)

    @property
    def on(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        use_cut = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cut else self.mixup
        lam = float(self.rng.beta(alpha, alpha))
        perm = torch.from_numpy(self.rng.permutation(len(t))).to(t.device)
        if use_cut and x.dim() == 4:
            h, w = x.shape[2:]
            ch, cw = int(round(h * math.sqrt(1 - lam))), int(round(w * math.sqrt(1 - lam)))
            cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            x = lam * x + (1.0 - lam) * x[perm]
        return x, t, t[perm], lam


def _train_step(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                loss_fn, opt: torch.optim.Optimizer, ph: Phase, mixer: Mixer | None,
                clip_params: list[torch.nn.Parameter]) -> tuple[float, float]:
    """One optimiser step (with optional mixup/cutmix and gradient clipping); returns (loss sum, correct)."""
    if mixer is not None:
        x, ta, tb, lam = mixer(x, t)
        logits = logits_of(x)
        loss = lam * loss_fn(logits, ta) + (1.0 - lam) * loss_fn(logits, tb)
        pred = logits.argmax(1)
        correct = lam * float((pred == ta).sum()) + (1.0 - lam) * float((pred == tb).sum())
    else:
        logits = logits_of(x)
        loss = loss_fn(logits, t)
        correct = float((logits.argmax(1) == t).sum())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if ph.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(clip_params, ph.grad_clip)
    opt.step()
    return loss.item() * len(t), correct


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


def _evaluate_head(net: models.Net, feats: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    net.head.eval()
    with torch.no_grad():
        logits = net.head(feats)
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


# ---------------------------------------------------------------- resume after an interruption
@dataclass(frozen=True)
class Resume:
    """Where a phase saves its progress (every `every` epochs) so that a killed run continues bit-exactly."""

    path: Path
    every: int = 1


RESUME_FORMAT = "tlpipe-resume-v1"


def fingerprint(*parts: Any) -> str:
    """sha256 over tensors (bytes), state dicts (sorted keys) and anything else (repr)."""
    h = hashlib.sha256()

    def add(part: Any) -> None:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(part.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        elif isinstance(part, dict) and all(isinstance(v, torch.Tensor) for v in part.values()):
            for k in sorted(part):
                h.update(k.encode())
                add(part[k])
        else:
            h.update(repr(part).encode())

    for part in parts:
        add(part)
    return h.hexdigest()


def _subset(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefixes)}


def _read_resume(resume: Resume | None, fp: str) -> dict[str, Any] | None:
    """The saved progress of this very phase (same fingerprint), else None (absent, foreign or unreadable)."""
    if resume is None or not resume.path.is_file():
        return None
    try:
        saved = torch.load(resume.path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply not resumed from
        return None
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT or saved.get("fingerprint") != fp:
        return None
    print(f"resuming from {resume.path} after epoch {saved['epoch']}", flush=True)
    return saved


@dataclass
class _Loop:
    """What the epoch loop needs; head-only and partial fine-tuning differ only in these."""

    net: models.Net
    ph: Phase
    keep: nn.Module  # whose state is kept as best: the head alone, or the whole net
    net_keys: tuple[str, ...]  # state keys of net that training changes (stored by a resume file)
    best_keys: tuple[str, ...]  # the same, relative to `keep`
    trainable: list[nn.Parameter]
    gens: list[torch.Generator]  # every generator the loop draws from (batch order, augmentation)
    mixer: Mixer | None
    fp: str
    resume: Resume | None

    def save(self, epoch: int, done: bool, opt, sched: Schedule, res: FitResult) -> None:
        if self.resume is None or (not done and epoch % self.resume.every):
            return
        payload = {
            "format": RESUME_FORMAT, "fingerprint": self.fp, "epoch": epoch, "done": done,
            "state": _subset(self.net.state_dict(), self.net_keys), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gens": [g.get_state() for g in self.gens],
            "torch_rng": torch.get_rng_state(),
            "mixer": json.dumps(self.mixer.rng.bit_generator.state) if self.mixer else "",
            "history": res.history, "initial": res.initial, "best_epoch": res.best_epoch,
            "best_val_acc": res.best_val_acc, "best_val_loss": res.best_val_loss,
            "best_state": _subset(res.best_state, self.best_keys),
        }
        with atomic_path(self.resume.path) as tmp:
            with open(tmp, "wb") as f:  # file object: the bytes do not depend on the temp name
                torch.save(payload, f)

    def restore(self, saved: dict[str, Any], opt, sched: Schedule | None, res: FitResult,
                hook: EpochHook | None) -> None:
        self.net.load_state_dict(saved["state"], strict=False)
        if opt is not None:
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        for g, st in zip(self.gens, saved["gens"]):
            g.set_state(st)
        torch.set_rng_state(saved["torch_rng"])
        if self.mixer:
            self.mixer.rng.bit_generator.state = json.loads(saved["mixer"])
        res.history, res.initial = list(saved["history"]), dict(saved["initial"])
        res.best_epoch, res.best_val_acc, res.best_val_loss = saved["best_epoch"], saved["best_val_acc"], saved["best_val_loss"]
        res.best_state = {**copy.deepcopy(self.keep.state_dict()), **saved["best_state"]}
        for rec in res.history:
            if hook:
                hook(rec)


def _epochs(loop: _Loop, res: FitResult, saved: dict[str, Any] | None, y: torch.Tensor,
            inputs: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
            logits_of: Callable[[torch.Tensor], torch.Tensor], validate: Callable[[], tuple[float, float]],
            train_mode: Callable[[], None], opt, hook: EpochHook | None) -> None:
    """The epoch loop both modes share: batches, schedule, keep rule, early stopping, resume files."""
    ph = loop.ph
    loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
    steps = range(0, len(y), ph.batch_size)
    sched = Schedule(opt, ph, len(steps))
    gen = loop.gens[0]
    if saved:
        loop.restore(saved, opt, sched, res, hook)
        start = int(saved["epoch"])
    else:
        _start(res, loop.keep, *validate())
        start = 0
    for epoch in range(start + 1, ph.epochs + 1):
        order = torch.randperm(len(y), generator=gen)
        tot, correct = 0.0, 0.0
        train_mode()
        lr = opt.param_groups[0]["lr"]
        for i in progress.bar(steps, f"epoch {epoch}/{ph.epochs}", unit="batches", leave=False, summary=False):
            idx = order[i : i + ph.batch_size]
            l_sum, c = _train_step(logits_of, inputs(idx, gen), y[idx], loss_fn, opt, ph, loop.mixer, loop.trainable)
            tot, correct = tot + l_sum, correct + c
            sched.batch_done()
        vl, va = validate()
        sched.epoch_done(vl)
        rec = {"epoch": epoch, "train_loss": tot / len(y), "train_acc": correct / len(y), "val_loss": vl,
               "val_acc": va, "lr": lr}
        _keep(res, loop.keep, rec)
        if hook:
            hook(rec)
        stop = ph.early_stopping > 0 and epoch - res.best_epoch >= ph.early_stopping
        loop.save(epoch, stop or epoch == ph.epochs, opt, sched, res)
        if stop:
            print(f"early stopping after epoch {epoch}: no better validation for {ph.early_stopping} epochs",
                  flush=True)
            break


def _finish_saved(loop: _Loop, saved: dict[str, Any], res: FitResult, hook: EpochHook | None) -> bool:
    """A phase whose resume file says it finished: restore its end state without recomputing anything."""
    if not saved or not saved.get("done"):
        return False
    loop.restore(saved, None, None, res, hook)
    return True


def fit_head(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc,
             hook: EpochHook | None = None, resume: Resume | None = None) -> FitResult:
    """Frozen backbone: cache pooled features once (K views), then train only the head on them."""
    models.freeze(net, 0)
    fp = fingerprint("head", ph, pp, net.state_dict(), train.images, train.targets, valid.images, valid.targets,
                     torch.get_rng_state())
    tf = make_augment(pp.augment, _generator(), pp.size)
    gen = _generator()
    mixer = Mixer(ph, int(torch.randint(0, 2**31 - 1, (1,)).item())) if ph.mixup_alpha or ph.cutmix_alpha else None
    loop = _Loop(net, ph, net.head, ("head.",), ("",), list(net.head.parameters()), [gen, tf.gen], mixer, fp, resume)
    res, saved = FitResult(), _read_resume(resume, fp)
    if not _finish_saved(loop, saved, res, hook):
        views = [run_groups(net, train.images, pp, None, tf if v else None, desc=f"features view {v}")
                 for v in range(ph.feature_views)]
        feats = torch.stack(views)  # V, N, D
        vfeats = run_groups(net, valid.images, pp, None, desc="features valid")
        y, vy = train.targets.to(pp.device), valid.targets.to(pp.device)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
        opt = _optimizer([{"params": net.head.parameters()}], ph)

        def inputs(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return feats[torch.randint(0, ph.feature_views, (len(idx),), generator=g), idx]

        _epochs(loop, res, saved, y, inputs, lambda x: net.head(net.dropout(x)),
                lambda: _evaluate_head(net, vfeats, vy, loss_fn), lambda: (net.head.train(), net.dropout.train()),
                opt, hook)
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
    net.dropout.train()
    net.head.train()


def _suffix(net: models.Net, x: torch.Tensor, first: int) -> torch.Tensor:
    return net.head(net.dropout(net.pool(net.forward_groups(x, first, None))))


def _prefix_source(net: models.Net, train: Data, pp: Preproc, first: int, views: int, tf: Augment):
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
                hook: EpochHook | None = None, resume: Resume | None = None) -> FitResult:
    """Fine-tune the last `unfreeze_blocks` groups + head; the frozen prefix runs under no_grad."""
    first = models.freeze(net, ph.unfreeze_blocks)
    fp = fingerprint("partial", ph, pp, net.state_dict(), train.images, train.targets, valid.images,
                     valid.targets, torch.get_rng_state())
    tf = make_augment(pp.augment, _generator(), pp.size)
    gen = _generator()
    mixer = Mixer(ph, int(torch.randint(0, 2**31 - 1, (1,)).item())) if ph.mixup_alpha or ph.cutmix_alpha else None
    changing = tuple(f"groups.{i}." for i in range(first, len(net.groups))) + ("pool.", "head.")
    backbone = [p for g in net.groups[first:] for p in g.parameters()] + list(net.pool.parameters())
    loop = _Loop(net, ph, net, changing, changing, backbone + list(net.head.parameters()), [gen, tf.gen], mixer,
                 fp, resume)
    res, saved = FitResult(), _read_resume(resume, fp)
    if not _finish_saved(loop, saved, res, hook):
        vprefix = run_groups(net, valid.images, pp, first)  # constant: frozen prefix, no augmentation
        prefix = _prefix_source(net, train, pp, first, ph.prefix_views, tf)
        y, vy = train.targets.to(pp.device), valid.targets.to(pp.device)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=ph.label_smoothing)
        opt = _optimizer([{"params": net.head.parameters()},
                          {"params": backbone, "lr": ph.lr * ph.backbone_lr_mult}], ph)
        _epochs(loop, res, saved, y, prefix, lambda x: _suffix(net, x, first),
                lambda: _val_partial(net, vprefix, vy, first, loss_fn), lambda: _set_modes(net, first, ph.bn_train),
                opt, hook)
    res.last_state = copy.deepcopy(net.state_dict())
    return res


def fit(net: models.Net, train: Data, valid: Data, ph: Phase, pp: Preproc, hook: EpochHook | None = None,
        resume: Resume | None = None) -> FitResult:
    """Train per `ph`: head only on cached features when unfreeze_blocks is 0, else partial fine-tuning."""
    net.to(pp.device)
    if pp.channels_last:
        to_channels_last(net)
    if ph.unfreeze_blocks == 0:
        return fit_head(net, train, valid, ph, pp, hook, resume)
    return fit_partial(net, train, valid, ph, pp, hook, resume)
