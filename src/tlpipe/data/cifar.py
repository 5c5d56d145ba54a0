"""CIFAR-10 from the official python tarball, read without running pickled code.

The batches are pickled dicts of numpy arrays. `pickle.load` (and torchvision's CIFAR10 loader,
which calls it) would import and call any global a tampered file names, so a restricted
Unpickler is used instead: it resolves only the numpy array reconstruction globals (plus
`_codecs.encode`, which Python 3 pickles of bytes use) and refuses every other global and any
persistent id. The images are written as PNGs into one zip in data/raw (`cifar10.zip::train/...`),
read by images.Reader like any other archive; the tarball itself is removed.
"""

from __future__ import annotations

import codecs
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PipelineError
from . import archive as arc
from .download import fetch

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # torchvision.datasets.CIFAR10.url
MD5 = "c58f30108f718f92721af3b95e74349a"  # torchvision.datasets.CIFAR10.tgz_md5
TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST = ("test_batch",)
META = "batches.meta"
SIDE = 32
ZIP_NAME = "cifar10.zip"
LABELS_JSON = "cifar10_labels.json"  # label id -> CIFAR-10 class name, next to the zip

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 1.x (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # Python 3 protocol-2 pickles of bytes
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction globals; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def unpickle(data: bytes, where: str) -> dict[str, Any]:
    """A CIFAR batch or meta file as a dict with str keys."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure of a hostile or broken pickle is the same user error
        raise PipelineError(f"cifar10: {where} is not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise PipelineError(f"cifar10: {where} is not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def batch_arrays(batch: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8, labels N int64) of one batch, shapes and label range checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise PipelineError(f"cifar10: {where}: 'data' must be a uint8 array of shape (N, {3 * SIDE * SIDE})")
    if not isinstance(labels, list) or len(labels) != len(data) \
            or not all(isinstance(x, int) and 0 <= x < 10 for x in labels):
        raise PipelineError(f"cifar10: {where}: 'labels' must be {len(data)} ints in 0..9")
    return data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def label_names(meta: dict[str, Any], where: str) -> list[str]:
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise PipelineError(f"cifar10: {where}: 'label_names' must list 10 names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def read_members(tar: Path) -> dict[str, bytes]:
    """The batch and meta files of the tarball (streamed once, every entry checked)."""
    wanted = {*TRAIN, *TEST, META}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar, "r|*") as tf:
            for info in tf:
                arc.check_tar_member(tar, info)
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base in wanted:
                    f = tf.extractfile(info)
                    assert f is not None
                    found[base] = f.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PipelineError(f"archive {tar}: not a readable tar archive ({exc})") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise PipelineError(f"cifar10: {tar} lacks {', '.join(missing)}; is it the CIFAR-10 python archive "
                            f"(cifar-10-python.tar.gz)?")
    return found


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def index_tarball(tar: Path, raw: Path) -> list[dict[str, str]]:
    """Write every image of the tarball as a PNG into raw/cifar10.zip; rows keep the official split."""
    members = read_members(tar)
    names = label_names(unpickle(members[META], f"{tar}::{META}"), f"{tar}::{META}")
    rows: list[dict[str, str]] = []
    part = raw / f"{ZIP_NAME}.part"
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as zf:
        for split, batches in (("train", TRAIN), ("test", TEST)):
            n = 0
            for b in batches:
                imgs, labels = batch_arrays(unpickle(members.pop(b), f"{tar}::{b}"), f"{tar}::{b}")
                for img, label in zip(imgs, labels):
                    member = f"{split}/{n:05d}.png"
                    zf.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), _png(img))
                    path = arc.member_path(raw / ZIP_NAME, member)
                    rows.append({"path": path, "label": str(int(label)), "group": path, "split": split})
                    n += 1
    part.replace(raw / ZIP_NAME)
    (raw / LABELS_JSON).write_text(json.dumps({str(i): n for i, n in enumerate(names)}, indent=2) + "\n")
    return rows


def cifar10(raw: Path, url: str, sha256: str = "", md5: str = "") -> list[dict[str, str]]:
    """Download the CIFAR-10 python tarball into `raw`, convert it, drop the tarball."""
    tar = fetch(url, raw / "cifar-10-python.tar.gz", sha256=sha256, md5=md5)
    if arc.kind(tar) != "tar":
        raise PipelineError(f"cifar10: {url} is a zip, not the CIFAR-10 python tarball")
    rows = index_tarball(tar, raw)
    tar.unlink()
    return rows
