"""Decode images once (from files or archive members) into uint8 arrays at the model's input size."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import progress
from ..errors import PipelineError
from . import archive as arc

Image.MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused as decompression bombs


def decode(data: bytes, name: str, size: int | None) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array of shape (size, size, 3) (size None: not resized)."""
    if not data:
        raise PipelineError(f"image {name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = _to_rgb(img)
                if size is not None:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.array(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PipelineError(f"image {name}: too many pixels (decompression bomb?)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PipelineError(f"image {name}: cannot decode ({exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, P, RGBA, CMYK, I;16, ...) to RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


class Reader:
    """Reads bytes of manifest paths relative to `root`, opening each archive once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, path: str) -> bytes:
        member = arc.split_member(path)
        if member is None:
            file = self.root / path
            if not file.is_file():
                raise PipelineError(f"image {file}: file not found")
            return file.read_bytes()
        name, inner = member
        if name not in self._zips:
            archive = self.root / name
            if not archive.is_file():
                raise PipelineError(f"archive not found: {archive}")
            self._zips[name] = arc.open_zip(archive)
        try:
            return self._zips[name].read(inner)
        except KeyError as exc:
            raise PipelineError(f"image {path}: not in archive {name}") from exc

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._zips.clear()


def load_array(paths: list[str], root: Path, size: int, desc: str = "decode") -> np.ndarray:
    """Decode every path once into an (N, size, size, 3) uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    reader = Reader(root)
    try:
        for i, p in enumerate(progress.bar(paths, desc, unit="images")):
            out[i] = decode(reader.read(p), p, size)
    finally:
        reader.close()
    return out
