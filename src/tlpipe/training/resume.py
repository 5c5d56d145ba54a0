"""Resume files: a phase's progress saved every few epochs, so a killed run continues bit-exactly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESUME_FORMAT = "tlpipe-resume-v1"


@dataclass(frozen=True)
class Resume:
    """Where a phase saves its progress (every `every` epochs) so that a killed run continues bit-exactly."""

    path: Path
    every: int = 1


def fingerprint(*parts: Any) -> str:
    """sha256 over tensors (bytes), state dicts (sorted keys) and anything else (repr)."""
    h = hashlib.sha256()

    def add(part: Any) -> None:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(part.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        elif isinstance(part, dict) and all(isinstance(v, torch.Tensor) for v in part.values()):
            for k in sorted(part):
                h.update(k.encode())
                add(part[k])
        else:
            h.update(repr(part).encode())

    for part in parts:
        add(part)
    return h.hexdigest()


def subset(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """CPU copies of the entries of a state dict whose keys start with one of `prefixes`."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefixes)}


def read(resume: Resume | None, fp: str) -> dict[str, Any] | None:
    """The saved progress of this very phase (same fingerprint), else None (absent, foreign or unreadable)."""
    if resume is None or not resume.path.is_file():
        return None
    try:
        saved = torch.load(resume.path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply not resumed from
        return None
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT or saved.get("fingerprint") != fp:
        return None
    print(f"resuming from {resume.path} after epoch {saved['epoch']}", flush=True)
    return saved
