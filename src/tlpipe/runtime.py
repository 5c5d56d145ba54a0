"""Seeding and device choice: the two things every stage sets before any work."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int, device: str = "cpu") -> None:
    """Seed Python, NumPy and torch; off the CPU, also ask torch for deterministic kernels.

    (CPU kernels are deterministic already, and the switch costs ~3 s of imports per stage.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
