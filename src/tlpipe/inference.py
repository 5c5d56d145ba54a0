"""The inference path: preprocessing as a checkpoint was trained, batched forward passes, probabilities.

Imported by predict, serving, evaluation and training; imports nothing from them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import models, progress
from .data.images import LUMA, decode
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
    input_norm: str = "none"  # per-image photometric normalisation before mean/std (see `photometric`)


def photometric(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-image normalisation of float NCHW images in [0, 1], before the backbone's mean/std:
    `grayworld` scales each channel to the image's grey mean (undoes a colour cast / white balance);
    `autolevel` stretches each channel from its 1st to its 99th percentile to [0, 1] (undoes colour cast,
    exposure and contrast, like an auto-levels tool); `equalize` equalises the histogram of the luminance (256
    levels) and scales R, G, B by the same per-pixel gain, so hue is kept (the GTSRB literature's histogram
    equalisation). `none` leaves the image as it is."""
    if mode == "grayworld":
        means = x.mean((2, 3), keepdim=True).clamp_min(1e-3)
        return (x * (means.mean(1, keepdim=True) / means)).clamp_(0.0, 1.0)
    if mode == "autolevel":
        flat = x.flatten(2)
        lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99], device=x.device), dim=2, keepdim=True)
        return ((flat - lo) / (hi - lo).clamp_min(1.0 / 255)).clamp_(0.0, 1.0).view_as(x)
    if mode == "equalize":
        luma = x[:, 0] * LUMA[0] + x[:, 1] * LUMA[1] + x[:, 2] * LUMA[2]
        level = (luma.flatten(1) * 255.0).round_().long()
        counts = torch.zeros(x.shape[0], 256, dtype=torch.float64, device=x.device)
        cdf = counts.scatter_add_(1, level, torch.ones_like(level, dtype=torch.float64)).cumsum_(1)
        darkest = cdf.gather(1, level.min(1, keepdim=True).values)  # pixels at the lowest level: mapped to 0
        lut = ((cdf - darkest) / (cdf[:, -1:] - darkest).clamp_min(1.0)).to(x.dtype)
        gain = lut.gather(1, level) / luma.flatten(1).clamp_min(1.0 / 255)
        return (x * gain.view(x.shape[0], 1, *x.shape[2:])).clamp_(0.0, 1.0)
    return x


def preproc_from_meta(meta: dict[str, Any], device: str, channels_last: bool, batch: int) -> Preproc:
    """Inference preprocessing exactly as the checkpoint was trained: input size, mean, std."""
    return Preproc(tuple(meta["mean"]), tuple(meta["std"]), int(meta["input_size"]), resolve_device(device),
                   channels_last, batch, str(meta.get("input_norm", "none")))


def preproc_from_params(model: dict[str, Any], device: str) -> Preproc:
    """Preprocessing of a model about to be trained, from the `model` params section (training, audit)."""
    spec = models.spec(model["backbone"])
    return Preproc(spec.mean, spec.std, model["input_size"], resolve_device(device), model["channels_last"],
                   model["inference_batch_size"], model["input_norm"])


def to_channels_last(net: nn.Module) -> None:
    """NHWC weights for NHWC inputs; a no-op (no weight copies) when they already are."""
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters()):
        net.to(memory_format=torch.channels_last)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`: a CPU tensor bound for CUDA goes through pinned memory without blocking the host
    (the transfer overlaps the queued kernels); on the CPU it is `x` itself, as `x.to(device)` gives."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def prepare(x: torch.Tensor, prep: Preproc) -> torch.Tensor:
    """Normalised network input on prep.device (uint8, or float in [0, 1] from an augmentation)."""
    x = x.to(prep.device)
    if prep.input_norm != "none":
        x = photometric(x.float().div_(255.0) if x.dtype == torch.uint8 else x, prep.input_norm)
    x = normalize(x, prep.mean, prep.std)
    return x.contiguous(memory_format=torch.channels_last) if prep.channels_last else x


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> (its weights' key, folded copy or None)


def _weights_key(net: nn.Module) -> tuple:
    """Changes whenever a weight or buffer of `net` does: in place (an optimiser step, load_state_dict bump
    the tensor's version), or moved (.to(device), channels_last give new storage)."""
    return tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))


def eval_net(net: models.Net, x: torch.Tensor) -> models.Net:
    """The module to run an eval-mode pass of `net` with: its BatchNorm-folded copy (models.fold_batchnorm),
    made once per state of the weights, when it gives net's features on the first images of the prepared
    batch `x` (to 1e-3 of their scale); else `net` itself."""
    key = _weights_key(net)
    hit = _FOLDED.get(net)
    if hit is None or hit[0] != key:
        folded, pairs = models.fold_batchnorm(net)
        probe = x[:2]
        ref = net.features(probe)
        same = pairs > 0 and float((folded.features(probe) - ref).abs().max()) <= 1e-3 * (1 + float(ref.abs().max()))
        hit = (key, folded if same else None)
        _FOLDED[net] = hit
    return hit[1] if hit[1] is not None else net


@torch.no_grad()
def run_groups(net: models.Net, images: torch.Tensor, prep: Preproc, stop: int | None,
               tf: Callable[[torch.Tensor], torch.Tensor] | None = None, desc: str = "") -> torch.Tensor:
    """Eval-mode pass of groups[:stop] (pooled features when stop is None) over uint8 images, through the
    BatchNorm-folded copy of `net` (eval_net)."""
    net.eval()
    if prep.channels_last:
        to_channels_last(net)
    outs, run = [], None
    steps = range(0, len(images), prep.batch)
    for i in (progress.bar(steps, desc, unit="batches") if desc and len(steps) >= 4 else steps):
        x = to_device(images[i : i + prep.batch], prep.device)
        x = prepare(tf(x) if tf is not None else x, prep)
        run = eval_net(net, x) if run is None else run
        outs.append(run.features(x) if stop is None else run.forward_groups(x, 0, stop))
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def run_rest(net: models.Net, prefix: torch.Tensor, start: int, batch: int) -> torch.Tensor:
    """Eval-mode pooled features from the activations `prefix` of groups[:start] (run_groups(..., start))."""
    net.eval()
    return torch.cat([net.pool(net.forward_groups(prefix[i : i + batch], start, None))
                      for i in range(0, len(prefix), batch)]) if len(prefix) else torch.empty(0)


@torch.no_grad()
def predict_logits(net: models.Net, images: torch.Tensor, prep: Preproc) -> torch.Tensor:
    """(N, classes) float logits on the CPU of uint8 NCHW images."""
    feats = run_groups(net, images, prep, None)
    return net.head(feats).float().cpu()


def classify(net: models.Net, meta: dict[str, Any], blobs: list[tuple[str, bytes]], batch: int = 64) -> torch.Tensor:
    """(N, classes) probabilities of encoded images (name, bytes): decoded, resized and normalised as the
    checkpoint was trained, softmax(logits / T). The one inference path of predict and the served model."""
    prep = preproc_from_meta(meta, "cpu", channels_last=True, batch=batch)
    images = torch.stack([torch.from_numpy(decode(data, name, prep.size)).permute(2, 0, 1) for name, data in blobs])
    logits = predict_logits(net, images, prep)
    return torch.softmax(logits / float(meta.get("temperature", 1.0)), 1)
