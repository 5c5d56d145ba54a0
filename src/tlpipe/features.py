"""The frozen ImageNet backbone's pooled features of a split folder's plain images, computed once.

The audit stage writes them to data/features (<split>.npy, float32, one row per manifest row, and
features.json); train_head, lr_find and crossval read them back instead of running the backbone again, but
only when features.json's `key` equals the one their own params give (backbone, size, normalisation, batch,
device and the manifests' bytes). Otherwise they compute the same features themselves, so a stale folder can cost time,
never a wrong number. Eval mode, no augmentation, the same `run_groups` call as training: the shared features
are bit-identical to the ones train_head would compute."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .atomic import atomic_dir, write_json
from .data import manifest
from .data.splitdir import SplitDir
from .inference import Preproc, preproc_from_params, run_groups

INFO = "features.json"


def key(model: dict[str, Any], device: str, split: SplitDir) -> dict[str, Any]:
    """What the features depend on: the `model` params that reach the backbone's pass, the device, and the
    sha256 of each split's manifest (which images, in which order)."""
    return {"backbone": model["backbone"], "weights": "imagenet", "input_size": int(model["input_size"]),
            "input_norm": model["input_norm"], "channels_last": bool(model["channels_last"]),
            "batch": int(model["inference_batch_size"]), "device": str(device),
            "manifests": {s: hashlib.sha256(split.manifest(s).read_bytes()).hexdigest() for s in manifest.SPLITS}}


def extract(net: models.Net, images: Any, prep: Preproc, desc: str = "") -> np.ndarray:
    """(N, D) float32 pooled features of uint8 NCHW images (eval mode, no augmentation)."""
    if not len(images):
        return np.zeros((0, net.num_features), dtype=np.float32)
    return run_groups(net, images, prep, None, desc=desc).float().cpu().numpy()


def backbone(model: dict[str, Any], device: str) -> tuple[models.Net, Preproc]:
    """The frozen ImageNet backbone (its head unused) on the device, with its preprocessing."""
    prep = preproc_from_params(model, device)
    net = models.build(model["backbone"], 2, pretrained=True).to(prep.device)
    net.requires_grad_(False)
    return net, prep


def compute(split: SplitDir, params: dict[str, Any], out: Path) -> dict[str, np.ndarray]:
    """Features of train/valid/test of `split` (decoded cache when fresh), written to `out` as one folder."""
    net, prep = backbone(params["model"], params["device"])
    feats = {s: extract(net, split.images(s, prep.size), prep, desc=f"features {s}") for s in manifest.SPLITS}
    with atomic_dir(out) as tmp:
        for s, arr in feats.items():
            np.save(tmp / f"{s}.npy", arr)
        write_json(tmp / INFO, {"key": key(params["model"], params["device"], split),
                                "dim": int(next(iter(feats.values())).shape[1]),
                                "counts": {s: len(a) for s, a in feats.items()}})
    return feats


def load(folder: Path | None, params: dict[str, Any], split: SplitDir, splits: tuple[str, ...]) -> dict[str, Any]:
    """{split: (N, D) float32 torch tensor} of `splits` from `folder` when its key matches these params and this
    split folder; {} otherwise (no folder, ImageNet weights not used, or computed for something else), with a
    line saying why when a folder was given."""
    import torch

    if folder is None:
        return {}
    if params["model"]["weights"] != "imagenet":
        return {}
    info = folder / INFO
    if not info.is_file():
        print(f"features: {info} not found; computing them here")
        return {}
    want = key(params["model"], params["device"], split)
    have = json.loads(info.read_text()).get("key", {})
    stale = sorted(k for k in want if have.get(k) != want[k])
    if stale:
        print(f"features: {folder} was computed for other {', '.join(stale)}; computing them here")
        return {}
    print(f"features: {', '.join(splits)} from {folder} (computed once by the audit stage)")
    return {s: torch.from_numpy(np.load(folder / f"{s}.npy")) for s in splits}
