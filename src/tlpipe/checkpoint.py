"""Checkpoints: a plain dict (state_dict + metadata in primitive types), read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import models
from .atomic import atomic_path
from .errors import PipelineError

FORMAT = "tlpipe-checkpoint-v1"


def save(path: str | Path, net: models.Net, meta: dict[str, Any]) -> None:
    """Write {format, state_dict, meta} atomically."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: given a path, torch names the archive after the
            torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, f)  # (random) temp name


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; one clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"checkpoint {path}: not a loadable tlpipe checkpoint ({first[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise PipelineError(f"checkpoint {path}: not a tlpipe checkpoint (no {FORMAT!r} marker)")
    return ckpt


def restore(path: str | Path, backbone: str | None = None) -> tuple[models.Net, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights."""
    ckpt = load(path)
    meta = ckpt["meta"]
    if backbone is not None and meta["backbone"] != backbone:
        raise PipelineError(
            f"checkpoint {path}: was trained with backbone {meta['backbone']!r}, params ask for {backbone!r}"
        )
    net = models.build(meta["backbone"], len(meta["classes"]), pretrained=False)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise PipelineError(f"checkpoint {path}: weights do not fit {meta['backbone']} ({str(exc)[:200]})") from exc
    return net, meta
