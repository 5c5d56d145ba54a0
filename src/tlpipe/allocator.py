"""The process's memory allocator: freed blocks kept for reuse instead of being handed back to the OS.

Called by `stage.entry` in a script's own process (every stage, `tlpipe-predict`); not by the served model,
where it made no measurable difference under load and would change the malloc settings of any process that
loads the model (bench/README.md 14.). Imports nothing heavy."""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: blocks below it come from the reusable heap
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept, up to this, rather than given back to the OS


def keep_freed_memory() -> bool:
    """Linux/glibc only (else a no-op, False): freed blocks under 32 MiB (activations, batches, gradients) are
    reused from the heap instead of being unmapped and mapped afresh. With glibc's defaults (a dynamic 128 KiB-
    32 MiB mmap threshold, the heap trimmed above twice that) a process that frees and reallocates the same
    activations every step pays a page fault per 4 KiB touched: millions per stage, 10-30% of a training or
    evaluation stage's wall time on 2 cores. The price: blocks of a few MiB share the heap, whose fragments
    raise a stage's peak RSS by ~0.1-0.25 GB (bench/README.md 14.). Skipped when the user tunes malloc through
    the environment (MALLOC_*_ or GLIBC_TUNABLES)."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ) \
            or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
