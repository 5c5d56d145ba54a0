"""Augmentation and normalisation.

Two engines, chosen by `augment.engine`:
- `batched` (default): one affine_grid/grid_sample call per batch with per-image parameters (crop scale,
  aspect, rotation, shift, flips), then colour jitter, grayscale and erasing, all vectorised. Per-image
  torchvision.transforms.v2 pipelines cost ~2 ms per 64-px image here, as much as the frozen backbone
  prefix itself; this engine costs a few percent.
- `v2`: the torchvision.transforms.v2 ops listed in `augment.v2`, applied per image, exactly as the
  tutorials write them (Resize -> RandomRotation -> CenterCrop -> flips -> RandomGrayscale, RandomCrop with
  padding, ...). Seeded from the pipeline seed, like everything else.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import PipelineError

# torchvision.transforms.v2 ops that augment.v2 may name (looked up in this table, never evaluated)
V2_OPS = ("Resize", "CenterCrop", "RandomCrop", "RandomResizedCrop", "RandomRotation", "RandomAffine",
          "RandomPerspective", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomGrayscale", "ColorJitter",
          "RandomErasing", "GaussianBlur", "Pad", "RandomAutocontrast", "RandomEqualize", "RandAugment",
          "TrivialAugmentWide", "AutoAugment", "RandomInvert", "RandomPosterize", "RandomAdjustSharpness")


class Augment(Protocol):
    gen: torch.Generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class BatchAugment:
    """RandomResizedCrop + RandomRotation + flips + ColorJitter + colour cast + RandomGrayscale + Gaussian noise
    + RandomErasing, sampled per image, applied per batch."""

    def __init__(self, aug: dict[str, Any], generator: torch.Generator | None = None):
        self.scale_min = float(aug.get("crop_scale_min", 1.0))
        self.rotation = float(aug.get("rotation", 0.0))
        self.hflip = float(aug.get("hflip", 0.0))
        self.vflip = float(aug.get("vflip", 0.0))
        self.jitter = float(aug.get("color_jitter", 0.0))
        self.grayscale = float(aug.get("grayscale", 0.0))
        self.erasing = float(aug.get("erasing", 0.0))
        self.white_balance = float(aug.get("white_balance", 0.0))
        self.exposure = float(aug.get("exposure", 0.0))
        self.noise = float(aug.get("noise", 0.0))
        self.gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.gen) * (hi - lo) + lo

    def _theta(self, n: int) -> torch.Tensor:
        """Per-image affine matrices in normalised coordinates (output -> input sampling)."""
        side = self._uniform(n, math.sqrt(self.scale_min), 1.0)
        aspect = torch.exp(self._uniform(n, math.log(0.9), math.log(1.1))).sqrt()
        sx, sy = (side * aspect).clamp(max=1.0), (side / aspect).clamp(max=1.0)
        ang = self._uniform(n, -self.rotation, self.rotation) * (math.pi / 180.0)
        tx, ty = self._uniform(n, -1, 1) * (1 - sx), self._uniform(n, -1, 1) * (1 - sy)
        flip = torch.where(torch.rand(n, generator=self.gen) < self.hflip, -1.0, 1.0)
        vflip = torch.where(torch.rand(n, generator=self.gen) < self.vflip, -1.0, 1.0) if self.vflip else 1.0
        cos, sin = torch.cos(ang), torch.sin(ang)
        row0 = torch.stack([sx * cos * flip, -sy * sin * vflip, tx], 1)
        row1 = torch.stack([sx * sin * flip, sy * cos * vflip, ty], 1)
        return torch.stack([row0, row1], 1)

    def _gray(self, x: torch.Tensor) -> torch.Tensor:
        pick = (torch.rand(x.shape[0], generator=self.gen) < self.grayscale).to(x.device).view(-1, 1, 1, 1)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        return torch.where(pick, gray, x)

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """RandomErasing: per picked image one rectangle of 2-33% of the area, aspect 0.3-3.3, set to 0."""
        n, _, h, w = x.shape
        pick = torch.rand(n, generator=self.gen) < self.erasing
        area = self._uniform(n, 0.02, 0.33) * h * w
        aspect = torch.exp(self._uniform(n, math.log(0.3), math.log(1 / 0.3)))
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        y0 = (torch.rand(n, generator=self.gen) * (h - eh + 1)).floor()
        x0 = (torch.rand(n, generator=self.gen) * (w - ew + 1)).floor()
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        box = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + eh).view(-1, 1, 1))
               & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + ew).view(-1, 1, 1)) & pick.view(-1, 1, 1))
        return x.masked_fill(box.unsqueeze(1).to(x.device), 0.0)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        n, j = x.shape[0], self.jitter
        b, c, s = (self._uniform(n, max(0.0, 1 - j), 1 + j).view(n, 1, 1, 1) for _ in range(3))
        x = x * b
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return (gray + (x - gray) * s).clamp_(0.0, 1.0)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Colour cast (a gain per channel in [1 - w, 1 + w]) and over-exposure (one gain in [1, 1 + e]),
        clipped: the white balance and exposure of other cameras and light."""
        n = x.shape[0]
        gains = torch.ones(n, 3, 1, 1)
        if self.white_balance > 0:
            w = self.white_balance
            gains = gains * self._uniform(3 * n, 1 - w, 1 + w).view(n, 3, 1, 1)
        if self.exposure > 0:
            gains = gains * self._uniform(n, 1.0, 1.0 + self.exposure).view(n, 1, 1, 1)
        return (x * gains.to(x.device)).clamp_(0.0, 1.0)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian pixel noise, each image's standard deviation drawn from [0, noise] (pixels in [0, 1]),
        clipped: sensor noise of other cameras and light."""
        n = x.shape[0]
        std = self._uniform(n, 0.0, self.noise).view(n, 1, 1, 1)
        return (x + (torch.randn(x.shape, generator=self.gen) * std).to(x.device)).clamp_(0.0, 1.0)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> augmented float32 NCHW in [0, 1]."""
        x = batch.float().div_(255.0)
        theta = self._theta(x.shape[0]).to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter > 0:
            x = self._color(x)
        if self.white_balance > 0 or self.exposure > 0:
            x = self._cast(x)
        if self.grayscale > 0:
            x = self._gray(x)
        if self.noise > 0:
            x = self._noise(x)
        if self.erasing > 0:
            x = self._erase(x)
        return x


def build_v2(ops: list[Any], where: str = "augment.v2"):
    """A torchvision.transforms.v2 Compose from a params list of {OpName: {kwargs}} (or plain op names)."""
    from torchvision.transforms import v2

    built = []
    for i, item in enumerate(ops):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise PipelineError(f"params: {where}[{i}] must be an op name or a one-key mapping {{Op: {{args}}}}")
        (name, kwargs), = item.items()
        if name not in V2_OPS:
            raise PipelineError(f"params: {where}[{i}] {name!r} is not one of {', '.join(V2_OPS)}")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise PipelineError(f"params: {where}[{i}] {name} takes a mapping of arguments, got {kwargs!r}")
        try:
            built.append(getattr(v2, name)(**kwargs))
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"params: {where}[{i}] {name}({kwargs}): {exc}".splitlines()[0]) from exc
    return v2.Compose(built)


class V2Augment:
    """torchvision.transforms.v2 ops per image on uint8 CHW tensors; torch's RNG is forked and seeded from
    `gen` for every batch, so results depend only on the pipeline seed."""

    def __init__(self, ops: list[Any], size: int, generator: torch.Generator):
        self.compose = build_v2(ops)
        self.size = size
        self.gen = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.gen).item())
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for img in batch.cpu():
                y = self.compose(img)
                if tuple(y.shape[-2:]) != (self.size, self.size):
                    raise PipelineError(f"params: augment.v2 turns {self.size}px images into {tuple(y.shape[-2:])}; "
                                        f"the ops must end at model.input_size ({self.size})")
                out.append(y)
        x = torch.stack(out).to(batch.device)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def make_augment(aug: dict[str, Any], generator: torch.Generator, size: int) -> Augment:
    """The training augmentation the params ask for (engine batched or v2)."""
    if aug.get("engine", "batched") == "v2":
        return V2Augment(list(aug.get("v2") or []), size, generator)
    return BatchAugment(aug, generator)


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW (or float NCHW already in [0, 1]) -> float32 normalised with the backbone's mean and std."""
    x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s

