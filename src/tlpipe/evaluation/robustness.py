"""Accuracy under a fixed, seeded set of image corruptions at three severities each.

Every corruption maps a uint8 NCHW batch, a severity 1..3 and a torch.Generator to a uint8 batch of the same
shape, built from torchvision.transforms.v2.functional ops where one exists. Strengths scale with the image
side, so a severity means the same at 32 and 64 px. Random draws (cast direction, blur angle, noise, rotation
sign) come from the generator only: a seed (and the batch size) fixes every corrupted image."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F

from ..config.params import CORRUPTIONS as NAMES
from ..errors import PipelineError
from ..inference import Preproc, predict_logits
from ..models import Net

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
SEVERITIES = (1, 2, 3)


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _signs(n: int, g: torch.Generator) -> torch.Tensor:
    """A random +1/-1 per image."""
    return torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)


def _per_sign(x: torch.Tensor, sign: torch.Tensor, op: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    """op(images, +1) on the images drawn +1, op(images, -1) on the others (ops taking one value per batch)."""
    out = x.clone()
    for s in (1.0, -1.0):
        if (sign == s).any():
            out[sign == s] = op(x[sign == s], s)
    return out


def white_balance(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """A warm (or, drawn per image, cool) cast: red and blue gains apart by 0.15, 0.3, 0.45."""
    a = 0.075 * severity * _signs(len(x), g).view(-1, 1, 1, 1)
    gains = torch.cat([1 + a, torch.ones_like(a), 1 - a], 1)[:, : x.shape[1]]
    return _u8(_f(x) * gains)


def hue(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Hue turned by 0.06, 0.12, 0.2 of the colour circle, direction drawn per image."""
    shift = (0.06, 0.12, 0.2)[severity - 1]
    return _per_sign(x, _signs(len(x), g), lambda b, s: F.adjust_hue(b, s * shift))


def brightness(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Darker: brightness x0.7, x0.5, x0.3."""
    return F.adjust_brightness(x, (0.7, 0.5, 0.3)[severity - 1])


def contrast(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Flatter: contrast x0.6, x0.4, x0.2 around the mean grey."""
    return F.adjust_contrast(x, (0.6, 0.4, 0.2)[severity - 1])


def overexposure(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Brighter with clipping: brightness x1.5, x2, x2.5."""
    return F.adjust_brightness(x, (1.5, 2.0, 2.5)[severity - 1])


def warm_overexposure(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """A warm cast and over-exposure at once, clipped: red x1.15, x1.3, x1.45 and blue x0.85, x0.7, x0.55, then
    brightness x1.5, x2, x2.5. Reds and whites wash out together, as in the official GTSRB test tracks that an
    early preset's model read as stop signs (no entry -> stop; bench/README.md 16.)."""
    a = 0.15 * severity
    gains = torch.tensor([1 + a, 1.0, 1 - a])[: x.shape[1]].view(1, -1, 1, 1) * (1.5, 2.0, 2.5)[severity - 1]
    return _u8(_f(x) * gains)


def _kernel(sigma: float, side: int) -> int:
    """Odd Gaussian kernel size covering 3 sigma, small enough for reflect padding."""
    return min(2 * math.ceil(3 * sigma) + 1, 2 * ((side - 1) // 2) + 1)


def gaussian_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur, sigma 1.5%, 3%, 5% of the image side."""
    sigma = (0.015, 0.03, 0.05)[severity - 1] * min(x.shape[-2:])
    k = _kernel(sigma, min(x.shape[-2:]))
    return F.gaussian_blur(x, [k, k], [sigma, sigma])


def _line_kernels(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, k, k) normalised line kernels of `length` pixels at an angle drawn per image."""
    k = length if length % 2 else length + 1
    theta = torch.rand(n, generator=g) * math.pi
    r = torch.arange(k, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    on = ((-s * xx + c * yy).abs() <= 0.5) & ((c * xx + s * yy).abs() <= length / 2)
    w = on.float()
    return (w / w.sum((1, 2), keepdim=True)).unsqueeze(1)


def motion_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Straight-line motion blur (a line-kernel conv2d), 6%, 12%, 20% of the side long, angle per image."""
    n, ch, h, w = x.shape
    length = max(2, round((0.06, 0.12, 0.2)[severity - 1] * min(h, w)))
    kern = _line_kernels(n, min(length, 2 * ((min(h, w) - 1) // 2) + 1), g)
    pad = kern.shape[-1] // 2
    y = nnf.pad(_f(x).reshape(1, n * ch, h, w), (pad, pad, pad, pad), mode="reflect")
    y = nnf.conv2d(y, kern.repeat_interleave(ch, 0), groups=n * ch)
    return _u8(y.reshape(n, ch, h, w))


def noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise, std 0.04, 0.08, 0.16 of the range."""
    std = (0.04, 0.08, 0.16)[severity - 1]
    return _u8(_f(x) + std * torch.randn(x.shape, generator=g))


def jpeg(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """JPEG round trip at quality 30, 15, 6."""
    return F.jpeg(x, (30, 15, 6)[severity - 1])


def downscale(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Down to 50%, 35%, 25% of the side (antialiased), then bilinear back up."""
    h, w = x.shape[-2:]
    f = (0.5, 0.35, 0.25)[severity - 1]
    small = F.resize(x, [max(1, round(h * f)), max(1, round(w * f))], antialias=True)
    return F.resize(small, [h, w], antialias=False)


def rotation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Rotation by 5, 10, 15 degrees (bilinear, black corners), direction drawn per image."""
    deg = (5.0, 10.0, 15.0)[severity - 1]
    return _per_sign(x, _signs(len(x), g),
                     lambda b, s: F.rotate(b, s * deg, interpolation=F.InterpolationMode.BILINEAR))


CORRUPTIONS: dict[str, Corruption] = {
    "white_balance": white_balance, "hue": hue, "brightness": brightness, "contrast": contrast,
    "overexposure": overexposure, "gaussian_blur": gaussian_blur, "motion_blur": motion_blur, "noise": noise,
    "jpeg": jpeg, "downscale": downscale, "rotation": rotation, "warm_overexposure": warm_overexposure,
}
assert tuple(CORRUPTIONS) == NAMES, "config.params.CORRUPTIONS names the same corruptions in the same order"


def check(name: str, severity: int) -> Corruption:
    """The corruption `name`; one PipelineError for an unknown name or a severity outside 1..3."""
    if name not in CORRUPTIONS:
        raise PipelineError(f"robustness: unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise PipelineError(f"robustness: severity must be one of 1, 2, 3; got {severity!r}")
    return CORRUPTIONS[name]


def generator(seed: int, name: str, severity: int) -> torch.Generator:
    """The generator of one (corruption, severity): independent of which other corruptions run."""
    return torch.Generator().manual_seed(seed * 1000 + NAMES.index(name) * 10 + severity)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """`images` (uint8 NCHW) under one corruption at one severity, deterministic for `seed`."""
    fn = check(name, severity)
    return fn(images, severity, generator(seed, name, severity))


def predictions(net: Net, images: torch.Tensor, pp: Preproc,
                fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Top-1 class of each image: corrupted by `fn` pp.batch images at a time (the draws per batch), then scored
    in one pass."""
    if not len(images):
        return torch.zeros(0, dtype=torch.long)
    if fn is not None:
        images = torch.cat([fn(images[i : i + pp.batch]) for i in range(0, len(images), pp.batch)])
    return predict_logits(net, images, pp).argmax(1)


def accuracy(net: Net, images: torch.Tensor, targets: torch.Tensor, pp: Preproc,
             fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy, rounded to 6 digits (0 for no images)."""
    return _share(predictions(net, images, pp, fn), targets)


def _share(pred: torch.Tensor, targets: torch.Tensor) -> float:
    return round(int((pred == targets).sum()) / len(targets), 6) if len(targets) else 0.0


def confusions(targets: torch.Tensor, pred: torch.Tensor, classes: Sequence[str] | None = None) -> list[str]:
    """Every confusion as "actual->predicted count", commonest first (ties by name); classes by name, or by
    index without `classes`."""
    name = (lambda i: classes[i]) if classes is not None else str
    wrong = targets != pred
    pairs = Counter(zip(targets[wrong].tolist(), pred[wrong].tolist()))
    named = sorted(((n, f"{name(a)}->{name(b)}") for (a, b), n in pairs.items()), key=lambda x: (-x[0], x[1]))
    return [f"{label} {n}" for n, label in named]


def report(net: Net, images: torch.Tensor, targets: torch.Tensor, pp: Preproc, seed: int,
           names: list[str] | tuple[str, ...] = NAMES, clean: float | None = None,
           classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Clean accuracy (`clean` when the caller has scored the clean images already, else one more pass),
    accuracy per corruption and severity (with each corruption's mean), the mean over every corrupted pass,
    the worst (corruption, severity) with its commonest confusion, and every pass's confusions ("errors", see
    `confusions`): which mistake a light or a blur brings, e.g. no_entry->stop under warm_overexposure."""
    table: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, list[str]]] = {}
    for name in names:
        check(name, 1)
        row, errors[name] = {}, {}
        for s in SEVERITIES:
            g = generator(seed, name, s)
            pred = predictions(net, images, pp, lambda x: CORRUPTIONS[name](x, s, g))  # noqa: B023
            row[str(s)] = _share(pred, targets)
            errors[name][str(s)] = confusions(targets, pred, classes)
        row["mean"] = round(sum(row.values()) / len(SEVERITIES), 6)
        table[name] = row
    cells = [(row[str(s)], name, s) for name, row in table.items() for s in SEVERITIES]
    worst = min(cells, key=lambda c: c[0]) if cells else (float("nan"), "", 0)
    return {"clean": accuracy(net, images, targets, pp) if clean is None else clean, "corruptions": table,
            "mean": round(sum(c[0] for c in cells) / max(len(cells), 1), 6),
            "worst": {"corruption": worst[1], "severity": worst[2], "accuracy": worst[0],
                      "commonest_error": (errors[worst[1]][str(worst[2])] or [""])[0] if cells else ""},
            "errors": errors}
