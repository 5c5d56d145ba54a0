"""The inference path: preprocessing as a checkpoint was trained, batched forward passes, probabilities.

Imported by predict, serving, evaluation and training; imports nothing from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import models, progress
from .data.images import decode
from .data.transforms import normalize
from .runtime import resolve_device


@dataclass
class Preproc:
    """How uint8 images become network input: normalisation, size, device, memory format, batch."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    device: torch.device
    channels_last: bool = False
    batch: int = 64  # images per forward pass without gradients


def preproc_from_meta(meta: dict[str, Any], device: str, channels_last: bool, batch: int) -> Preproc:
    """Inference preprocessing exactly as the checkpoint was trained: input size, mean, std."""
    return Preproc(tuple(meta["mean"]), tuple(meta["std"]), int(meta["input_size"]), resolve_device(device),
                   channels_last, batch)


def to_channels_last(net: nn.Module) -> None:
    """NHWC weights for NHWC inputs; a no-op (no weight copies) when they already are."""
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters()):
        net.to(memory_format=torch.channels_last)


def prepare(x: torch.Tensor, pp: Preproc) -> torch.Tensor:
    """Normalised network input on pp.device (uint8, or float in [0, 1] from an augmentation)."""
    x = normalize(x.to(pp.device), pp.mean, pp.std)
    return x.contiguous(memory_format=torch.channels_last) if pp.channels_last else x


@torch.no_grad()
def run_groups(net: models.Net, images: torch.Tensor, pp: Preproc, stop: int | None,
               tf: Callable[[torch.Tensor], torch.Tensor] | None = None, desc: str = "") -> torch.Tensor:
    """Eval-mode pass of groups[:stop] (pooled features when stop is None) over uint8 images."""
    net.eval()
    if pp.channels_last:
        to_channels_last(net)
    outs = []
    steps = range(0, len(images), pp.batch)
    for i in (progress.bar(steps, desc, unit="batches") if desc and len(steps) >= 4 else steps):
        x = images[i : i + pp.batch].to(pp.device)
        x = prepare(tf(x) if tf is not None else x, pp)
        outs.append(net.features(x) if stop is None else net.forward_groups(x, 0, stop))
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def predict_logits(net: models.Net, images: torch.Tensor, pp: Preproc) -> torch.Tensor:
    """(N, classes) float logits on the CPU of uint8 NCHW images."""
    feats = run_groups(net, images, pp, None)
    return net.head(feats).float().cpu()


def classify(net: models.Net, meta: dict[str, Any], blobs: list[tuple[str, bytes]], batch: int = 64) -> torch.Tensor:
    """(N, classes) probabilities of encoded images (name, bytes): decoded, resized and normalised as the
    checkpoint was trained, softmax(logits / T). The one inference path of predict and the served model."""
    pp = preproc_from_meta(meta, "cpu", channels_last=True, batch=batch)
    images = torch.stack([torch.from_numpy(decode(data, name, pp.size)).permute(2, 0, 1) for name, data in blobs])
    logits = predict_logits(net, images, pp)
    return torch.softmax(logits / float(meta.get("temperature", 1.0)), 1)
