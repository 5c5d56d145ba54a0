"""GTSRB's official test set as the test split (data.test_url + data.test_labels_url) and the ROI crop
(data.roi_crop), on a test-set pair built from the tiny training fixture and served over loopback HTTP."""

from __future__ import annotations

import copy
import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from _datafix import digest, gtsrb_test_records, gtsrb_test_zips
from _support import REPO
from conftest import TINY_SHA256
from tlpipe.config import params as P
from tlpipe.data import images, manifest, rawdir, sources, splitdir
from tlpipe.errors import PipelineError

CLASSES = ("12", "13", "14", "17")
PER_CLASS = 3


def _defaults() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _serve(tmp_path: Path, tiny_zip: Path, records: list[dict], **kw) -> Path:
    www = tmp_path / "www"
    gtsrb_test_zips(www, records, **kw)
    shutil.copy(tiny_zip, www / tiny_zip.name)
    return www


def _data(base: str, www: Path, **kw) -> dict:
    data = {**_defaults()["data"], "dataset": "gtsrb", "url": f"{base}/GTSRB_tiny.zip", "sha256": TINY_SHA256,
            "test_url": f"{base}/GTSRB_Final_Test_Images.zip",
            "test_sha256": digest(www / "GTSRB_Final_Test_Images.zip", "sha256"),
            "test_labels_url": f"{base}/GTSRB_Final_Test_GT.zip",
            "test_labels_sha256": digest(www / "GTSRB_Final_Test_GT.zip", "sha256")}
    return {**data, **kw}


@pytest.fixture
def served(tmp_path, tiny_zip, http_server):
    """(records, www folder, base URL) of the test pair (4 classes x 3 images) beside the tiny training zip."""
    records = gtsrb_test_records(tiny_zip, CLASSES, PER_CLASS)
    www = _serve(tmp_path, tiny_zip, records)
    return records, www, http_server(www)


def test_download_gives_official_test_rows(served, tmp_path):
    records, www, base = served
    counts = rawdir.build(tmp_path / "raw", _data(base, www))
    rows = manifest.read(tmp_path / "raw" / "index.csv")
    test = [r for r in rows if r["split"] == "test"]
    assert {r["split"] for r in rows} == {"train", "test"} and len(rows) == 420 + len(records)
    assert counts["images"] == len(rows)
    assert [(r["path"], r["label"], r["group"]) for r in test] == [
        (f"GTSRB_Final_Test_Images.zip::GTSRB/Final_Test/Images/{rec['Filename']}", rec["ClassId"],
         f"test-{rec['Filename'][:-4]}") for rec in records]
    for name in ("GTSRB_tiny.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"):
        assert (tmp_path / "raw" / name).read_bytes() == (www / name).read_bytes()  # archives kept as is
    reader = images.Reader(tmp_path / "raw")
    try:
        assert [reader.read(r["path"]) for r in test] == [rec["data"] for rec in records]
    finally:
        reader.close()


def test_fixed_test_rows_feed_test_valid_comes_from_training_tracks(served, tmp_path):
    """Known classes: test = the official images, valid = whole training tracks; seen-unknown (14) and
    held-out (17) test images come only from the official test rows."""
    records, www, base = served
    p = _defaults()
    p["data"] = _data(base, www, known_classes={12: "priority_road", 13: "give_way"})
    p["unknown"] = {**p["unknown"], "classes": [14], "holdout_classes": [17], "train_images": 30,
                    "valid_images": 30, "test_images": 10, "holdout_test_images": 10}
    rawdir.build(tmp_path / "raw", p["data"])
    index = tmp_path / "raw" / "index.csv"
    report = splitdir.make_split(index, tmp_path / "split", p)
    assert report["fixed_by_data"] == ["test", "train"] and report["leak_free"]
    official = {f"GTSRB_Final_Test_Images.zip::GTSRB/Final_Test/Images/{r['Filename']}": r["ClassId"] for r in records}
    test = manifest.read(tmp_path / "split" / "test.csv")
    assert {r["path"]: r["origin"] for r in test} == {k: v for k, v in official.items() if v in ("12", "13")}
    valid = manifest.read(tmp_path / "split" / "valid.csv")
    assert valid and all(r["path"].startswith("GTSRB_tiny.zip::") for r in valid)
    splitdir.add_unknown(index, tmp_path / "split", tmp_path / "split_unknown", p)
    merged = {s: manifest.read(tmp_path / "split_unknown" / f"{s}.csv") for s in manifest.SPLITS}
    unknown_test = {r["path"]: r["origin"] for r in merged["test"] if r["label"] == manifest.UNKNOWN}
    assert unknown_test == {k: v for k, v in official.items() if v in ("14", "17")}
    assert not [r for s in ("train", "valid") for r in merged[s] if r["path"] in official or r["origin"] == "17"]


def test_checksum_mismatch_names_the_url_and_keeps_nothing(served, tmp_path):
    records, www, base = served
    for key, url_key in (("test_sha256", "test_url"), ("test_labels_sha256", "test_labels_url")):
        data = _data(base, www, **{key: "0" * 64})
        with pytest.raises(PipelineError, match="sha256 mismatch") as info:
            sources.build(tmp_path / key, data)
        assert data[url_key] in str(info.value)
        assert not (tmp_path / key / Path(data[url_key]).name).exists()


def test_missing_archive_is_one_error(served, tmp_path):
    records, www, base = served
    data = _data(base, www)
    (www / "GTSRB_Final_Test_GT.zip").unlink()
    with pytest.raises(PipelineError, match="HTTP 404") as info:
        sources.build(tmp_path / "raw", data)
    assert "GTSRB_Final_Test_GT.zip" in str(info.value)


def test_labelled_image_missing_from_the_zip(tmp_path, tiny_zip, http_server):
    records = gtsrb_test_records(tiny_zip, CLASSES, 2)
    www = _serve(tmp_path, tiny_zip, records, skip_images=("00003.ppm",))
    with pytest.raises(PipelineError, match=r"lists 00003\.ppm, which is not in .*GTSRB_Final_Test_Images\.zip"):
        sources.build(tmp_path / "raw", _data(http_server(www), www))


@pytest.mark.parametrize("class_id", ["x", "", "-1"])
def test_bad_class_id(tmp_path, tiny_zip, http_server, class_id):
    records = gtsrb_test_records(tiny_zip, CLASSES, 1)
    records[2]["ClassId"] = class_id
    www = _serve(tmp_path, tiny_zip, records)
    with pytest.raises(PipelineError, match=r"GT-final_test\.csv row 00002\.ppm: ClassId"):
        sources.build(tmp_path / "raw", _data(http_server(www), www))


def test_labels_zip_without_the_csv(tmp_path, tiny_zip, http_server):
    records = gtsrb_test_records(tiny_zip, CLASSES, 1)
    www = _serve(tmp_path, tiny_zip, records, labels_name="labels.csv")
    with pytest.raises(PipelineError, match="holds no GT-final_test.csv"):
        sources.build(tmp_path / "raw", _data(http_server(www), www))


def _manual_crop(full: np.ndarray, rec: dict) -> np.ndarray:
    """The README's recipe: the Roi.* box (corners inclusive) scaled by stored/Width and stored/Height."""
    h, w = full.shape[:2]
    width, height, x1, y1, x2, y2 = (int(rec[k]) for k in sources.ROI_FIELDS)
    sx, sy = w / width, h / height
    return full[round(y1 * sy) : round((y2 + 1) * sy), round(x1 * sx) : round((x2 + 1) * sx)]


def test_roi_crop_decodes_the_sign_box(served, tmp_path, tiny_zip):
    records, www, base = served
    rawdir.build(tmp_path / "raw", _data(base, www, roi_crop=True))
    rows = manifest.read(tmp_path / "raw" / "index.csv")
    test = [r for r in rows if r["split"] == "test"]
    train = [r for r in rows if r["split"] == "train"]
    assert all(images.ROI in r["path"] for r in rows)
    reader = images.Reader(tmp_path / "raw")
    try:
        for row, rec in zip(test, records):
            crop = images.decode(reader.read(row["path"]), row["path"], None)
            full = images.decode(rec["data"], rec["Filename"], None)
            assert crop.shape[:2] != full.shape[:2] and np.array_equal(crop, _manual_crop(full, rec))
        base_path, roi = images.split_roi(train[0]["path"])  # a training image: the first of class 1
        assert base_path == "GTSRB_tiny.zip::GTSRB/Final_Training/Images/00001/00000_00000.ppm"
        full = images.decode(reader.read(base_path), base_path, None)
        with zipfile.ZipFile(tiny_zip) as zf:
            text = zf.read("GTSRB/Final_Training/Images/00001/GT-00001.csv").decode()
        rec = next(csv.DictReader(text.splitlines(), delimiter=";"))
        assert roi == tuple(int(rec[k]) for k in sources.ROI_FIELDS)
        assert np.array_equal(images.decode(reader.read(train[0]["path"]), "x", None), _manual_crop(full, rec))
    finally:
        reader.close()
    arr = images.load_array([r["path"] for r in test], tmp_path / "raw", 24)
    assert arr.shape == (len(test), 24, 24, 3)


def test_roi_crop_box_scaling():
    # a 29x30 original with ROI 5,6..24,25 stored at 32x32: scaled by 32/29 and 32/30
    assert images.crop_box((32, 32), (29, 30, 5, 6, 24, 25)) == (6, 6, 28, 28)
    assert images.crop_box((29, 30), (29, 30, 5, 6, 24, 25)) == (5, 6, 25, 26)  # stored at the original size
    assert images.crop_box((32, 32), (100, 100, 99, 99, 99, 99)) == (31, 31, 32, 32)  # never empty
    with pytest.raises(PipelineError, match="does not fit"):
        images.with_roi("a.ppm", 20, 20, 20, 5, 25, 10)
    with pytest.raises(PipelineError, match="does not fit"):
        images.with_roi("a.ppm", 20, 20, 8, 5, 6, 10)
    assert images.crop_box((20, 20), images.split_roi(images.with_roi("a", 20, 20, 5, 5, 20, 10))[1]) == (5, 5, 20, 11)
    assert images.split_roi("a.zip::b.ppm#roi=29,30,5,6,24,25") == ("a.zip::b.ppm", (29, 30, 5, 6, 24, 25))
    for plain in ("a.ppm#roi=1,2,3", "a.ppm#roi=0,2,0,0,0,0", "x#roi=1,1,0,0,0,0.png", "a.ppm"):
        assert images.split_roi(plain) == (plain, None)  # not a whole suffix: a plain file name


def test_default_pipeline_unchanged_without_test_urls(tiny_zip, tmp_path):
    data = {**_defaults()["data"], "dataset": "gtsrb", "url": tiny_zip.as_uri(), "sha256": TINY_SHA256}
    assert (data["test_url"], data["test_labels_url"], data["roi_crop"]) == ("", "", False)
    rows = sources.build(tmp_path / "raw", data)
    assert rows == sources.gtsrb_index(tmp_path / "raw" / tiny_zip.name) and "split" not in rows[0]


@pytest.mark.parametrize("changes, message", [
    ({"test_sha256": "abc"}, "data.test_sha256 must be empty or 64 hex digits"),
    ({"test_labels_sha256": "g" * 64}, "data.test_labels_sha256 must be empty or 64 hex digits"),
    ({"roi_crop": "yes"}, "data.roi_crop must be bool"),
    ({"test_url": 3}, "data.test_url must be str"),
    ({"test_url": "http://x/t.zip"}, "data.test_url and data.test_labels_url go together"),
    ({"test_labels_url": "http://x/gt.zip"}, "data.test_url and data.test_labels_url go together"),
    ({"dataset": "digits", "roi_crop": True}, "data.roi_crop applies to data.dataset gtsrb only"),
    ({"dataset": "cifar10", "test_url": "http://x/t.zip", "test_labels_url": "http://x/gt.zip"},
     "data.test_url applies to data.dataset gtsrb only"),
])
def test_params_validation_of_the_new_keys(changes, message):
    p = copy.deepcopy(_defaults())
    p["data"].update(changes)
    with pytest.raises(PipelineError, match=message):
        P.validate(p)


def test_params_accept_the_official_test_set():
    p = copy.deepcopy(_defaults())
    p["data"].update(dataset="gtsrb", test_url=sources.GTSRB_TEST_URL, test_labels_url=sources.GTSRB_TEST_GT_URL,
                     test_sha256="A" * 64, test_labels_sha256="", roi_crop=True)
    assert P.validate(p) is p
    assert sources.GTSRB_TEST_URL.rsplit("/", 1)[0] == sources.GTSRB_URL.rsplit("/", 1)[0]


def test_bad_roi_with_roi_crop(tmp_path, tiny_zip, http_server):
    records = gtsrb_test_records(tiny_zip, CLASSES, 1)
    records[1]["Roi.X1"] = "x"
    www = _serve(tmp_path, tiny_zip, records)
    data = _data(http_server(www), www)
    assert len(sources.build(tmp_path / "off", data)) == 420 + 4  # the ROI is read only with roi_crop
    with pytest.raises(PipelineError, match=r"row 00001\.ppm: Roi\.X1 'x' is not a whole number"):
        sources.build(tmp_path / "on", {**data, "roi_crop": True})
