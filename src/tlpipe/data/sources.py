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
from . import cifar, folders, images, tree
from .download import fetch

Row = dict[str, str]
GT_CSV = re.compile(r"(^|/)GT-(\d{5})\.csv$")
GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Training_Images.zip"
# The official test set (off by default; set data.test_url / data.test_labels_url to these or a mirror):
# the images, GTSRB/Final_Test/Images/NNNNN.ppm (+ GT-final_test.test.csv without ClassId), and the labels,
# GT-final_test.csv (Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId). It has no track ids.
GTSRB_TEST_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Test_Images.zip"
GTSRB_TEST_GT_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Test_GT.zip"
GT_TEST_CSV = "GT-final_test.csv"
ROI_FIELDS = ("Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")
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


def _int_field(rec: dict, key: str, where: str) -> int:
    try:
        return int(rec[key])
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"gtsrb: {where}: {key} {rec.get(key)!r} is not a whole number") from None


def _class_id(rec: dict, where: str) -> str:
    cls = _int_field(rec, "ClassId", where)
    if cls < 0:
        raise PipelineError(f"gtsrb: {where}: ClassId {rec['ClassId']!r} is negative")
    return str(cls)


def _gt_records(text: str, archive: Path, csv_name: str) -> list[dict]:
    """The rows of a `;`-separated GT csv; one error if it lacks the Filename/ClassId header."""
    reader = csv.DictReader(io.StringIO(text), delimiter=";")
    if not reader.fieldnames or "Filename" not in reader.fieldnames or "ClassId" not in reader.fieldnames:
        raise PipelineError(f"gtsrb: {archive}::{csv_name} has no Filename/ClassId header")
    return list(reader)


def _gt_row(archive: Path, member: str, rec: dict, group: str, roi: bool, where: str) -> Row:
    """One index row: the archive member, read cropped to its Roi.* box when `roi`."""
    path = arc.member_path(archive, member)
    if roi:
        try:
            path = images.with_roi(path, *(_int_field(rec, k, where) for k in ROI_FIELDS))
        except PipelineError as exc:
            raise PipelineError(f"gtsrb: {where}: {str(exc).removeprefix('image ')}") from None
    return {"path": path, "label": _class_id(rec, where), "group": group}


def gtsrb_index(archive: Path, roi: bool = False) -> list[Row]:
    """Parse every GT-000NN.csv of a GTSRB training archive into index rows; group = class + track."""
    rows: list[Row] = []
    with arc.open_zip(archive) as zf:
        names = set(zf.namelist())
        csvs = sorted(n for n in names if GT_CSV.search(n))
        if not csvs:
            raise PipelineError(f"gtsrb: {archive} holds no GT-000NN.csv file; is it the GTSRB training archive?")
        for name in csvs:
            folder = name[: name.rfind("/") + 1]
            for rec in _gt_records(zf.read(name).decode("utf-8-sig"), archive, name):
                member, where = f"{folder}{rec['Filename']}", f"{archive}::{name} row {rec['Filename']}"
                if member not in names:
                    raise PipelineError(f"gtsrb: {name} lists {arc.member_path(archive, member)} "
                                        f"which is not in {archive}")
                cls = _class_id(rec, where)
                rows.append(_gt_row(archive, member, rec, f"{cls}_{rec['Filename'].split('_', 1)[0]}", roi, where))
    return rows


def _test_labels(labels: Path) -> tuple[str, list[dict]]:
    """(csv name, rows) of GT-final_test.csv in the official test labels zip."""
    with arc.open_zip(labels) as zf:
        found = sorted(n for n in zf.namelist() if n.rsplit("/", 1)[-1] == GT_TEST_CSV)
        if not found:
            raise PipelineError(f"gtsrb: {labels} holds no {GT_TEST_CSV}; is it the official GTSRB_Final_Test_GT.zip?")
        return found[0], _gt_records(zf.read(found[0]).decode("utf-8-sig"), labels, found[0])


def gtsrb_test_index(images_zip: Path, labels: Path, roi: bool = False) -> list[Row]:
    """Index rows (split=test) of the official test set: images from `images_zip`, ClassId (and ROI) from
    the labels zip. It has no track ids, so each image is its own group: test-<filename stem>."""
    csv_name, recs = _test_labels(labels)
    with arc.open_zip(images_zip) as zf:
        members = {n.rsplit("/", 1)[-1]: n for n in zf.namelist() if not n.endswith("/")}
    if not recs:
        raise PipelineError(f"gtsrb: {labels}::{csv_name} lists no images")
    rows: list[Row] = []
    for rec in recs:
        name, where = rec["Filename"], f"{labels}::{csv_name} row {rec['Filename']}"
        if name not in members:
            raise PipelineError(f"gtsrb: {labels}::{csv_name} lists {name}, which is not in {images_zip}")
        row = _gt_row(images_zip, members[name], rec, f"test-{Path(name).stem}", roi, where)
        rows.append({**row, "split": "test"})
    return rows


def _archive_name(url: str, default: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name or default


def gtsrb(raw: Path, url: str, sha256: str, md5: str = "", roi: bool = False) -> list[Row]:
    """Download the GTSRB training archive into `raw` (kept as is) and index it."""
    archive = fetch(url, raw / _archive_name(url, "GTSRB_Final_Training_Images.zip"), sha256=sha256, md5=md5)
    return gtsrb_index(archive, roi)


def gtsrb_with_test(raw: Path, data: dict[str, Any]) -> list[Row]:
    """GTSRB training archive (split=train) plus, when data.test_url is set, the official test set (split=test);
    all three archives are kept as is in `raw` and read in place."""
    url, roi = data["url"] or GTSRB_URL, bool(data.get("roi_crop", False))
    test_url, labels_url = data.get("test_url", ""), data.get("test_labels_url", "")
    if not test_url and not labels_url:
        return gtsrb(raw, url, data["sha256"], data["md5"], roi)
    if not (test_url and labels_url):
        raise PipelineError("params: data.test_url and data.test_labels_url go together (set both or neither)")
    names = [_archive_name(u, d) for u, d in ((url, "GTSRB_Final_Training_Images.zip"),
                                               (test_url, "GTSRB_Final_Test_Images.zip"),
                                               (labels_url, "GTSRB_Final_Test_GT.zip"))]
    if len(set(names)) < 3:
        raise PipelineError(f"gtsrb: data.url, data.test_url and data.test_labels_url must name different files, "
                            f"got {names}")
    train = [{**r, "split": "train"} for r in gtsrb(raw, url, data["sha256"], data["md5"], roi)]
    images_zip = fetch(test_url, raw / names[1], sha256=data.get("test_sha256", ""))
    labels = fetch(labels_url, raw / names[2], sha256=data.get("test_labels_sha256", ""))
    return train + gtsrb_test_index(images_zip, labels, roi)


def describe(data: dict[str, Any]) -> str:
    """Where a dataset comes from, for messages."""
    if data["dataset"] in ("filelist", "imagefolder"):
        return f"{data['dataset']} {data['url'] or data['root']}"
    return f"{data['dataset']} {data['url']}" if data["url"] else data["dataset"]


def build(raw: Path, data: dict[str, Any]) -> list[Row]:
    """Write the dataset named by the `data` params section into `raw`; return its index rows."""
    name, url, sha256, md5 = data["dataset"], data["url"], data["sha256"], data["md5"]
    if name != "gtsrb" and (data.get("roi_crop") or data.get("test_url") or data.get("test_labels_url")):
        raise PipelineError(f"params: data.roi_crop and data.test_url/test_labels_url apply to gtsrb only, "
                            f"not data.dataset {name}")
    if name == "digits":
        return digits(raw)
    if name == "gtsrb":
        return gtsrb_with_test(raw, data)
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
