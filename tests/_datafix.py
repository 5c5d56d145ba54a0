"""Builders for dataset fixtures (image folders, list files, zip/tar archives, a fake CIFAR-10 tarball)
and a runner for the download/split stage scripts in a throwaway repository."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from _support import REPO

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def png(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (16, 12), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_folder(root: Path, classes: dict[str, int], split: str = "") -> Path:
    """root[/split]/<class>/<i>.png (class i gets a colour of its own)."""
    for k, (cls, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            write(root / split / cls / f"{i:03d}.png", png((40 * k % 256, 7 * i % 256, 90)))
    return root


def pack(folder: Path, dest: Path, wrapper: str = "") -> Path:
    """Zip or tar (by dest suffix: .zip, .tar, .tar.gz, .tgz) of folder's contents, optionally under `wrapper/`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    prefix = f"{wrapper}/" if wrapper else ""
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w") as zf:
            for p in files:
                zf.write(p, prefix + p.relative_to(folder).as_posix())
        return dest
    mode = "w:gz" if dest.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(dest, mode) as tf:
        for p in sorted(folder.rglob("*")):
            tf.add(p, prefix + p.relative_to(folder).as_posix(), recursive=False)
    return dest


def tar_with(dest: Path, entries: list[tarfile.TarInfo], files: dict[str, bytes] | None = None) -> Path:
    """A tar holding regular files `files` and the raw entries `entries` (links, devices, odd names)."""
    with tarfile.open(dest, "w") as tf:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in entries:
            tf.addfile(info)
    return dest


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way Python 2 / numpy 1 wrote the official CIFAR batches: str and bytes as
    (SHORT_)BINSTRING, numpy arrays through numpy.core.multiarray._reconstruct."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _binstring(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self._binstring(obj.encode("latin1"))
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj, name=None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """n random images; labels cycle over the 10 classes (shifted per batch), so 10 images hold each class."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [(3 * j + seed) % 10 for j in range(n)]


def cifar_tarball(dest: Path, per_batch: int = 10, py2: bool = True) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    """A CIFAR-10 python tarball in the official layout (cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta, readme.html), small batches of random images. Returns the path and the batches."""
    dump = py2_pickle if py2 else (lambda o: pickle.dumps(o, protocol=2))
    batches: dict[str, tuple[np.ndarray, list[int]]] = {}
    files: dict[str, bytes] = {}
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        data, labels = cifar_images(per_batch, seed=i)
        batches[name] = (data, labels)
        key = (lambda s: s.encode()) if py2 else (lambda s: s)
        files[name] = dump({key("batch_label"): key(f"batch {i}"), key("labels"): labels, key("data"): data,
                            key("filenames"): [key(f"img_{i}_{j}.png") for j in range(per_batch)]})
    files["batches.meta"] = dump({"num_cases_per_batch": per_batch, "label_names": CIFAR_NAMES, "num_vis": 3072})
    files["readme.html"] = b"<html>fake</html>"
    with tarfile.open(dest, "w:gz") as tf:
        d = tarfile.TarInfo("cifar-10-batches-py")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest, batches


def cifar_png_pixels(data: np.ndarray, j: int) -> np.ndarray:
    """Row j of a batch as the HWC image the source must write."""
    return data[j].reshape(3, 32, 32).transpose(1, 2, 0)


def digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def stage_repo(dst: Path, changes: dict) -> Path:
    """A throwaway repository: stages/ copied, src/ linked, params.yaml = ours with `changes` (dotted keys)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "stages", dst / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(REPO / "src", dst / "src")
    set_params(dst, changes, base=REPO / "params.yaml")
    return dst


def set_params(repo: Path, changes: dict, base: Path | None = None) -> None:
    params = yaml.safe_load((base or repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(repo: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, f"stages/{name}.py", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
GT_FIELDS = GT_HEADER.split(";")


def gtsrb_test_records(train_zip: Path, classes: tuple[str, ...], per_class: int) -> list[dict]:
    """The first `per_class` images of each class of a GTSRB training zip, renumbered NNNNN.ppm in order:
    GT csv fields (Filename, Width, ..., ClassId as strings) plus `data` (the image bytes) and `source`."""
    out: list[dict] = []
    with zipfile.ZipFile(train_zip) as zf:
        for cls in classes:
            folder = f"GTSRB/Final_Training/Images/{int(cls):05d}/"
            lines = zf.read(f"{folder}GT-{int(cls):05d}.csv").decode("utf-8-sig").splitlines()[1 : per_class + 1]
            for line in lines:
                rec = dict(zip(GT_FIELDS, line.split(";")))
                rec.update(source=folder + rec["Filename"], data=zf.read(folder + rec["Filename"]),
                           Filename=f"{len(out):05d}.ppm")
                out.append(rec)
    return out


def _gt_text(records: list[dict], fields: list[str]) -> str:
    return "\r\n".join([";".join(fields), *(";".join(r[f] for f in fields) for r in records)]) + "\r\n"


def gtsrb_test_zips(dest: Path, records: list[dict], skip_images: tuple[str, ...] = (),
                    labels_name: str = "GT-final_test.csv") -> tuple[Path, Path]:
    """The official test-set pair in `dest`: GTSRB_Final_Test_Images.zip (GTSRB/Final_Test/Images/NNNNN.ppm and
    GT-final_test.test.csv, no ClassId; `skip_images` left out) and GTSRB_Final_Test_GT.zip (`labels_name`)."""
    dest.mkdir(parents=True, exist_ok=True)
    images, labels = dest / "GTSRB_Final_Test_Images.zip", dest / "GTSRB_Final_Test_GT.zip"
    folder = "GTSRB/Final_Test/Images/"
    with zipfile.ZipFile(images, "w") as zf:
        for r in records:
            if r["Filename"] not in skip_images:
                zf.writestr(folder + r["Filename"], r["data"])
        zf.writestr(folder + "GT-final_test.test.csv", _gt_text(records, GT_FIELDS[:-1]))
    with zipfile.ZipFile(labels, "w") as zf:
        zf.writestr(labels_name, _gt_text(records, GT_FIELDS))
    return images, labels
