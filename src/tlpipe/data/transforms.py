"""Augmentation (torchvision.transforms.v2 on uint8 tensors) and normalisation."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2


def train_augment(aug: dict[str, Any], size: int) -> v2.Compose:
    """Per-image training augmentation built from the params `augment` section."""
    steps: list[Any] = [v2.RandomResizedCrop(size, scale=(aug["crop_scale_min"], 1.0), ratio=(0.9, 1.1), antialias=True)]
    if aug["rotation"] > 0:
        steps.append(v2.RandomRotation(aug["rotation"]))
    if aug["hflip"] > 0:
        steps.append(v2.RandomHorizontalFlip(aug["hflip"]))
    if aug["color_jitter"] > 0:
        j = aug["color_jitter"]
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(steps)


def augment_batch(batch: torch.Tensor, tf: v2.Compose) -> torch.Tensor:
    """Apply `tf` independently to each uint8 CHW image of an NCHW batch."""
    return torch.stack([tf(img) for img in batch])


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW normalised with the backbone's mean and std."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (batch.float().div_(255.0) - m) / s


def to_tensor(images) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy array -> (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
