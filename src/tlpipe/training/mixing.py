"""Mixup and CutMix on the batch entering the trainable part (cached features or prefix activations)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config.phases import Phase


class Mixer:
    """Mixup / CutMix on the batch entering the trainable part (cached features or prefix activations).

    When both alphas are set, each batch picks one of the two at random. CutMix needs a spatial map; on
    pooled features (head phases) it mixes like mixup with the cutmix alpha."""

    def __init__(self, phase: Phase, seed: int):
        self.mixup, self.cutmix = phase.mixup_alpha, phase.cutmix_alpha
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
            return self._cut(x, perm, lam, t)
        return lam * x + (1.0 - lam) * x[perm], t, t[perm], lam

    def _cut(self, x: torch.Tensor, perm: torch.Tensor, lam: float,
             t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Paste one box of the permuted batch; lam becomes the share of the area kept."""
        h, w = x.shape[2:]
        ch, cw = int(round(h * math.sqrt(1 - lam))), int(round(w * math.sqrt(1 - lam)))
        cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        return x, t, t[perm], 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
