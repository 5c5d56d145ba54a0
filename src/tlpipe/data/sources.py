"""Dataset sources: each writes its raw data into a folder and returns index rows
(path,label,group, plus split when the data fixes it)."""

from __future__ import annotations

import csv
import io
import math
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PipelineError
from . import archive as arc
from . import cifar, folders, tree
from .download import fetch

Row = dict[str, str]
GT_CSV = re.compile(r"(^|/)GT-(\d{5})\.csv$")
GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Training_Images.zip"
DATASETS = ("digits", "gtsrb", "cifar10", "filelist", "imagefolder")


def digits(raw: Path) -> list[Row]:
    """scikit-learn's bundled 8x8 handwritten digits, written as PNG files (works offline)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rows: list[Row] = []
    for i, (img, label) in enumerate(zip(bunch.images, bunch.target)):
        rel = f"digits/{label}/{i:04d}.png"
        out = raw / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(img * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out, optimize=False)
        rows.append({"path": rel, "label": str(int(label)), "group": rel})
    return rows


def _parse_gt_csv(text: str, folder: str, archive: Path, csv_name: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text), delimiter=";")
    if not reader.fieldnames or "Filename" not in reader.fieldnames or "ClassId" not in reader.fieldnames:
        raise PipelineError(f"gtsrb: {archive}::{csv_name} has no Filename/ClassId header")
    rows = []
    for rec in reader:
        name, cls = rec["Filename"], str(int(rec["ClassId"]))
        track = name.split("_", 1)[0]
        rows.append({"path": arc.member_path(archive, f"{folder}{name}"), "label": cls, "group": f"{cls}_{track}"})
    return rows


def gtsrb_index(archive: Path) -> list[Row]:
    """Parse every GT-000NN.csv of a GTSRB training archive into index rows; group = class + track."""
    rows: list[Row] = []
    with arc.open_zip(archive) as zf:
        names = set(zf.namelist())
        csvs = sorted(n for n in names if GT_CSV.search(n))
        if not csvs:
            raise PipelineError(f"gtsrb: {archive} holds no GT-000NN.csv file; is it the GTSRB training archive?")
        for name in csvs:
            folder = name[: name.rfind("/") + 1]
            text = zf.read(name).decode("utf-8-sig")
            for row in _parse_gt_csv(text, folder, archive, name):
                if arc.split_member(row["path"])[1] not in names:
                    raise PipelineError(f"gtsrb: {name} lists {row['path']} which is not in {archive}")
                rows.append(row)
    return rows


def gtsrb(raw: Path, url: str, sha256: str, md5: str = "") -> list[Row]:
    """Download the GTSRB training archive into `raw` (kept as is) and index it."""
    name = Path(urllib.parse.urlparse(url).path).name or "GTSRB_Final_Training_Images.zip"
    archive = fetch(url, raw / name, sha256=sha256, md5=md5)
    return gtsrb_index(archive)


def describe(data: dict[str, Any]) -> str:
    """Where a dataset comes from, for messages."""
    if data["dataset"] in ("filelist", "imagefolder"):
        return f"{data['dataset']} {data['url'] or data['root']}"
    return f"{data['dataset']} {data['url']}" if data["url"] else data["dataset"]


def build(raw: Path, data: dict[str, Any]) -> list[Row]:
    """Write the dataset named by the `data` params section into `raw`; return its index rows."""
    name, url, sha256, md5 = data["dataset"], data["url"], data["sha256"], data["md5"]
    if name == "digits":
        return digits(raw)
    if name == "gtsrb":
        return gtsrb(raw, url or GTSRB_URL, sha256, md5)
    if name == "cifar10":
        url = url or cifar.URL
        return cifar.cifar10(raw, url, sha256, md5 or (cifar.MD5 if url == cifar.URL else ""))
    if name not in ("filelist", "imagefolder"):
        raise PipelineError(f"params: data.dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if bool(url) == bool(data["root"]):
        raise PipelineError(f"params: data.dataset {name} needs exactly one of data.root (a local folder) "
                            f"and data.url (a zip or tar archive)")
    if name == "filelist" and not data["train_list"]:
        raise PipelineError("params: data.dataset filelist needs data.train_list")
    with tree.open_root(raw, data["root"], url, sha256, md5) as t:
        if name == "filelist":
            return folders.filelist(t, raw, data["train_list"], data["test_list"])
        return folders.imagefolder(t, raw)


def limit_per_class(rows: list[Row], max_per_class: int) -> list[Row]:
    """Keep whole groups, in sorted order, until each class has at least `max_per_class` images.

    When the data fixes splits, each (class, split) keeps its share of the limit
    (ceil(limit * images in the split / images of the class)), so a test split stays a test split."""
    if max_per_class <= 0:
        return rows
    by_group: dict[str, list[Row]] = defaultdict(list)
    totals: dict[str, int] = defaultdict(int)
    per_split: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        by_group[row["group"]].append(row)
        totals[row["label"]] += 1
        per_split[(row["label"], row.get("split", ""))] += 1
    cap = {key: math.ceil(max_per_class * n / totals[key[0]]) for key, n in per_split.items()}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    kept: list[Row] = []
    for group in sorted(by_group):
        members = by_group[group]
        key = (members[0]["label"], members[0].get("split", ""))
        if counts[key] < cap[key]:
            kept.extend(members)
            counts[key] += len(members)
    return kept
