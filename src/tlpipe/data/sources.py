"""Dataset sources: each writes its raw data into a folder and returns index rows (path,label,group)."""

from __future__ import annotations

import csv
import io
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PipelineError
from . import archive as arc
from .download import fetch

Row = dict[str, str]
GT_CSV = re.compile(r"(^|/)GT-(\d{5})\.csv$")


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


def gtsrb(raw: Path, url: str, sha256: str) -> list[Row]:
    """Download the GTSRB training archive into `raw` (kept as is) and index it."""
    name = Path(urllib.parse.urlparse(url).path).name or "GTSRB_Final_Training_Images.zip"
    archive = fetch(url, raw / name, sha256=sha256)
    return gtsrb_index(archive)


def limit_per_class(rows: list[Row], max_per_class: int) -> list[Row]:
    """Keep whole groups, in sorted order, until each class has at least `max_per_class` images."""
    if max_per_class <= 0:
        return rows
    by_group: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    counts: dict[str, int] = defaultdict(int)
    kept: list[Row] = []
    for group in sorted(by_group):
        members = by_group[group]
        label = members[0]["label"]
        if counts[label] < max_per_class:
            kept.extend(members)
            counts[label] += len(members)
    return kept
