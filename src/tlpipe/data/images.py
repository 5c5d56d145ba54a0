"""Decode images once (from files or archive members) into uint8 arrays at the model's input size."""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import progress
from ..errors import PipelineError
from . import archive as arc

Image.MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused as decompression bombs
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights of R, G, B (model.input_norm: equalize)
ROI = "#roi="  # manifest path suffix "<path>#roi=W,H,X1,Y1,X2,Y2": read the image cropped to that box (data.roi_crop)
ROI_SUFFIX = re.compile(re.escape(ROI) + r"([1-9]\d*),([1-9]\d*),(\d+),(\d+),(\d+),(\d+)$")


def with_roi(path: str, width: int, height: int, x1: int, y1: int, x2: int, y2: int) -> str:
    """`path` read cropped to the box (x1..x2, y1..y2, inclusive) given in pixels of a width x height original
    (a box reaching past the image edge is clipped to it when read)."""
    if width <= 0 or height <= 0 or not (0 <= x1 <= x2 and x1 < width and 0 <= y1 <= y2 and y1 < height):
        raise PipelineError(f"image {path}: ROI {x1},{y1},{x2},{y2} does not fit its {width}x{height} image")
    return f"{path}{ROI}{width},{height},{x1},{y1},{x2},{y2}"


def split_roi(path: str) -> tuple[str, tuple[int, ...] | None]:
    """(path without the ROI suffix, (W, H, X1, Y1, X2, Y2) or None); a path not ending in a whole
    suffix is a plain path (a user's file may have '#roi=' in its name)."""
    m = ROI_SUFFIX.search(path)
    if m is None:
        return path, None
    return path[: m.start()], tuple(int(v) for v in m.groups())


def crop_box(stored: tuple[int, int], roi: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The ROI (W, H, X1, Y1, X2, Y2 in original pixels, corners inclusive) scaled to an image stored at
    `stored` = (w, h) pixels (x by w/W, y by h/H; the GTSRB mirror stores 32x32), rounded to whole pixels:
    (left, top, right, bottom), right/bottom exclusive, never empty."""
    (w, h), (ow, oh, x1, y1, x2, y2) = stored, roi
    sx, sy = w / ow, h / oh
    left, top = min(round(x1 * sx), w - 1), min(round(y1 * sy), h - 1)
    right, bottom = min(round((x2 + 1) * sx), w), min(round((y2 + 1) * sy), h)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop(data: bytes, name: str, roi: tuple[int, ...]) -> bytes:
    """Image bytes cropped to the scaled ROI, as PNG (lossless)."""
    arr = decode(data, name, None)
    left, top, right, bottom = crop_box((arr.shape[1], arr.shape[0]), roi)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr[top:bottom, left:right])).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


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
    """Reads bytes of manifest paths relative to `root`, opening each archive once; a path with a ROI suffix
    (see with_roi) reads as the cropped image (PNG), so checks, the decoded cache and galleries all see crops."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, path: str) -> bytes:
        base, roi = split_roi(path)
        data = self._read(base)
        return crop(data, path, roi) if roi else data

    def _read(self, path: str) -> bytes:
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
