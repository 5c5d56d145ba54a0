"""Decoded-image cache: every manifest decoded once to a uint8 (N, S, S, 3) .npy, memory-mapped on read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json
from . import images, manifest

META = "cache.json"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build(split_dir: Path, raw: Path, out: Path, size: int) -> dict[str, int]:
    """Decode train/valid/test of `split_dir` into `out/<split>.npy`; record size and manifest digests."""
    counts: dict[str, int] = {}
    with atomic_dir(out) as tmp:
        for s in manifest.SPLITS:
            rows = manifest.read(split_dir / f"{s}.csv")
            arr = images.load_array([r["path"] for r in rows], raw, size, desc=f"decode {split_dir.name}/{s}")
            with open(tmp / f"{s}.npy", "wb") as f:
                np.save(f, arr)
            counts[s] = len(rows)
        write_json(tmp / META, {"input_size": size, "counts": counts,
                                "manifests": {s: digest(split_dir / f"{s}.csv") for s in manifest.SPLITS}})
    return counts


def is_fresh(split_dir: Path, cache_dir: Path, split: str, size: int) -> bool:
    """True when the cache was built from this very manifest at this input size."""
    meta_path = cache_dir / META
    if not meta_path.is_file() or not (cache_dir / f"{split}.npy").is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("input_size") == size and meta.get("manifests", {}).get(split) == digest(split_dir / f"{split}.csv")


def load(split_dir: Path, split: str, raw: Path, size: int, cache_dir: Path | None) -> np.ndarray:
    """The decoded images of one split: memory-mapped from a fresh cache, else decoded now."""
    if cache_dir is not None and is_fresh(split_dir, cache_dir, split, size):
        return np.load(cache_dir / f"{split}.npy", mmap_mode="r")
    rows = manifest.read(split_dir / f"{split}.csv")
    if cache_dir is not None:
        print(f"cache {cache_dir} is missing or stale for {split_dir.name}/{split} at {size}px: decoding now")
    return images.load_array([r["path"] for r in rows], raw, size, desc=f"decode {split_dir.name}/{split}")
