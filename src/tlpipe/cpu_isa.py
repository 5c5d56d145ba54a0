"""Pin PyTorch's CPU kernels to one instruction set (params.yaml `cpu_isa`), before torch loads.

PyTorch picks its CPU kernels (ATen's vectorised ops, oneDNN's convolutions) by the instruction set the CPU
has, and kernels of another width sum floats in another order: from the same params, an AVX-512 CPU trains
another model than an AVX2-only one. ATen's and oneDNN's own switches (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA) fix the choice, but only when set before torch loads, so every stage calls `pin` from
stages/_path.py, its first import. With `avx2` an AVX-512 and an AVX2-only AMD EPYC write byte-identical
outputs (bench/README.md 19.). MKL's matrix products are capped too (MKL_ENABLE_INSTRUCTIONS): on AMD CPUs MKL
runs one generic path either way, on Intel CPUs it would pick by instruction set (not tried here). params.yaml
wins over those variables. A CPU without the instruction set keeps its own best kernels (a forced AVX2 kernel
would crash it) and the stage says so. This module must not import torch (params.py imports its CPU_ISAS)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

import yaml

# cpu_isa -> ({switch: value}, the CPU features it needs, as NumPy names them)
CPU_ISAS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
             ("AVX2", "FMA3")),
    "avx512": ({"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                "MKL_ENABLE_INSTRUCTIONS": "AVX512"}, ("AVX512F", "AVX512BW", "AVX512VL", "AVX512DQ", "FMA3")),
    "default": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, ()),
}


def cpu_features() -> dict[str, bool]:
    """This CPU's features by NumPy's runtime detection ({"AVX2": True, ...}; no x86 names on other CPUs)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def pin(isa: object, environ: MutableMapping[str, str] = os.environ,
        features: dict[str, bool] | None = None) -> str:
    """Set the kernel switches in `environ` for `isa` (a key of CPU_ISAS) when the CPU has it; leave them for
    "" or a bad value (the params check names it). Returns what the stage should tell the user, or ""."""
    if isa not in CPU_ISAS:
        return ""
    switches, needs = CPU_ISAS[isa]
    have = cpu_features() if features is None else features
    if not all(have.get(f, False) for f in needs):
        return (f"note: cpu_isa {isa}: this CPU lacks {'/'.join(needs)}; PyTorch runs its own best kernels, "
                "so outputs may differ from a pinned run's")
    environ.update(switches)
    return ""


def from_params(path: str | Path = "params.yaml") -> object:
    """params.yaml's `cpu_isa`; None when the file is missing or unreadable (the stage's params check says why)."""
    try:
        params = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return params.get("cpu_isa") if isinstance(params, dict) else None
