"""Augmentation and normalisation, batched: one affine_grid/grid_sample call per batch, per-image parameters.

Per-image torchvision.transforms.v2 pipelines cost ~2 ms per 64-px image here, as much as the
frozen backbone prefix itself; sampling a random affine (crop scale, aspect, rotation, shift, flip)
and colour factors per image and applying them to the whole batch at once costs a few percent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


class BatchAugment:
    """RandomResizedCrop + RandomRotation + horizontal flip + ColorJitter, sampled per image, applied per batch."""

    def __init__(self, aug: dict[str, Any], generator: torch.Generator | None = None):
        self.scale_min = float(aug.get("crop_scale_min", 1.0))
        self.rotation = float(aug.get("rotation", 0.0))
        self.hflip = float(aug.get("hflip", 0.0))
        self.jitter = float(aug.get("color_jitter", 0.0))
        self.gen = generator

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
        cos, sin = torch.cos(ang), torch.sin(ang)
        row0 = torch.stack([sx * cos * flip, -sy * sin, tx], 1)
        row1 = torch.stack([sx * sin * flip, sy * cos, ty], 1)
        return torch.stack([row0, row1], 1)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        n, j = x.shape[0], self.jitter
        b, c, s = (self._uniform(n, max(0.0, 1 - j), 1 + j).view(n, 1, 1, 1) for _ in range(3))
        x = x * b
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return (gray + (x - gray) * s).clamp_(0.0, 1.0)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> augmented float32 NCHW in [0, 1]."""
        x = batch.float().div_(255.0)
        theta = self._theta(x.shape[0]).to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._color(x) if self.jitter > 0 else x


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW (or float NCHW already in [0, 1]) -> float32 normalised with the backbone's mean and std."""
    x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s

