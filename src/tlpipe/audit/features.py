"""Pooled features of the frozen ImageNet backbone for every split of a split folder, cached as
<out>/<split>.npy (float32, one row per manifest row) with features.json (backbone, size, row counts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..atomic import atomic_dir, write_json
from ..data import manifest
from ..data.splitdir import SplitDir
from ..inference import Preproc, preproc_from_params, run_groups


preproc = preproc_from_params  # the training stages' preprocessing, from inference (not training: editing
# the training loop must not rerun the audit)


def extract(net: models.Net, images: Any, prep: Preproc, desc: str = "") -> np.ndarray:
    """(N, D) float32 pooled features of uint8 NCHW images (eval mode, no augmentation)."""
    if not len(images):
        return np.zeros((0, net.num_features), dtype=np.float32)
    return run_groups(net, images, prep, None, desc=desc).float().cpu().numpy()


def backbone(model: dict[str, Any], device: str) -> tuple[models.Net, Preproc]:
    """The frozen ImageNet backbone (its head unused) on the device, with its preprocessing."""
    prep = preproc(model, device)
    net = models.build(model["backbone"], 2, pretrained=True).to(prep.device)
    net.requires_grad_(False)
    return net, prep


def compute(split: SplitDir, params: dict[str, Any], out: Path) -> dict[str, np.ndarray]:
    """Features of train/valid/test of `split` (decoded cache when fresh), written to `out` as one folder."""
    net, prep = backbone(params["model"], params["device"])
    feats = {s: extract(net, split.images(s, prep.size), prep, desc=f"audit features {s}") for s in manifest.SPLITS}
    with atomic_dir(out) as tmp:
        for s, arr in feats.items():
            np.save(tmp / f"{s}.npy", arr)
        write_json(tmp / "features.json", {"backbone": params["model"]["backbone"], "input_size": prep.size,
                                           "dim": int(next(iter(feats.values())).shape[1]),
                                           "counts": {s: len(a) for s, a in feats.items()}})
    return feats
