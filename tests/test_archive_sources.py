"""data/archive.py and data/sources.py: safe zip reading, GTSRB indexing, digits, per-class limits."""

from __future__ import annotations

import io
import re
import stat
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlpipe.data import archive as arc
from tlpipe.data import sources
from tlpipe.errors import PipelineError

TINY_CLASSES = {"1", "12", "13", "14", "17", "25", "38"}
TINY_SHA256 = "f7793ad7148e710a5a023ad812bcfd17b1c4fd7e020e70664480ff3dbcb44e43"


def _ppm(color=(200, 10, 10), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PPM")
    return buf.getvalue()


def _gtsrb_zip(path: Path, classes: dict[int, int], frames: int = 3, extra: dict[str, bytes] | None = None,
               csv_override: dict[int, str] | None = None) -> Path:
    """A miniature GTSRB training archive: classes {class id: n tracks}, `frames` images per track."""
    with zipfile.ZipFile(path, "w") as zf:
        for cls, tracks in classes.items():
            folder = f"GTSRB/Final_Training/Images/{cls:05d}/"
            lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
            for t in range(tracks):
                for f in range(frames):
                    name = f"{t:05d}_{f:05d}.ppm"
                    zf.writestr(folder + name, _ppm())
                    lines.append(f"{name};12;10;1;1;11;9;{cls}")
            text = (csv_override or {}).get(cls, "\n".join(lines) + "\n")
            zf.writestr(f"{folder}GT-{cls:05d}.csv", text)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------------ archive safety
@pytest.mark.parametrize("name", ["../evil.txt", "GTSRB/../../evil.txt", "/etc/evil", "..\\evil.txt",
                                  "C:/windows/evil.txt", "\\abs\\evil.txt"])
def test_escaping_entry_is_refused(tmp_path, name):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok/a.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    with pytest.raises(PipelineError) as info:
        arc.open_zip(bad)
    assert "escapes" in str(info.value) and str(bad) in str(info.value)


def test_symlink_entry_is_refused(tmp_path):
    bad = tmp_path / "link.zip"
    info = zipfile.ZipInfo("GTSRB/link")
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("GTSRB/a.txt", b"fine")
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(PipelineError, match="symlink"):
        arc.open_zip(bad)


def test_evil_entry_refused_by_gtsrb_index_too(tmp_path):
    bad = _gtsrb_zip(tmp_path / "g.zip", {1: 2, 2: 2}, extra={"../../evil.ppm": b"x"})
    with pytest.raises(PipelineError, match="escapes"):
        sources.gtsrb_index(bad)


def test_regular_zip_opens(tmp_path):
    ok = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok, "w") as zf:
        zf.writestr("dir/", b"")
        zf.writestr("dir/a..b.txt", b"dots inside a name are fine")
    with arc.open_zip(ok) as zf:
        assert zf.read("dir/a..b.txt").startswith(b"dots")


@pytest.mark.parametrize("content", [b"", b"this is not a zip archive\n" * 10, b"PK\x03\x04truncated"])
def test_non_zip_file_raises(tmp_path, content):
    f = tmp_path / "fake.zip"
    f.write_bytes(content)
    with pytest.raises(PipelineError) as info:
        arc.open_zip(f)
    assert "not a readable zip" in str(info.value) and str(f) in str(info.value)


def test_missing_archive_raises(tmp_path):
    with pytest.raises(PipelineError, match="not a readable zip"):
        arc.open_zip(tmp_path / "absent.zip")


def test_member_path_roundtrip():
    p = arc.member_path(Path("/data/raw/GTSRB.zip"), "GTSRB/Final_Training/Images/00001/00000_00000.ppm")
    assert p == "GTSRB.zip::GTSRB/Final_Training/Images/00001/00000_00000.ppm"
    assert arc.split_member(p) == ("GTSRB.zip", "GTSRB/Final_Training/Images/00001/00000_00000.ppm")
    assert arc.split_member("digits/3/0001.png") is None


# ------------------------------------------------------------------ GTSRB index on the real tiny archive
def test_gtsrb_index_tiny_archive(tiny_zip):
    rows = sources.gtsrb_index(tiny_zip)
    assert len(rows) == 420
    assert {r["label"] for r in rows} == TINY_CLASSES  # "1", not "00001"
    assert Counter(r["label"] for r in rows) == {c: 60 for c in TINY_CLASSES}
    groups = Counter(r["group"] for r in rows)
    assert len(groups) == 14 and set(groups.values()) == {30}
    for r in rows:
        name, member = arc.split_member(r["path"])
        assert name == tiny_zip.name
        folder, file = member.rsplit("/", 1)
        assert folder == f"GTSRB/Final_Training/Images/{int(r['label']):05d}"
        assert r["group"] == f"{r['label']}_{file.split('_')[0]}"
    assert all(re.fullmatch(r"(1|12|13|14|17|25|38)_\d{5}", g) for g in groups)
    assert Counter(g.split("_")[0] for g in groups) == {c: 2 for c in TINY_CLASSES}  # 2 tracks per class
    with zipfile.ZipFile(tiny_zip) as zf:
        names = set(zf.namelist())
    assert all(arc.split_member(r["path"])[1] in names for r in rows)


def test_gtsrb_downloads_via_file_url_and_indexes(tiny_zip, tmp_path):
    raw = tmp_path / "raw"
    rows = sources.gtsrb(raw, tiny_zip.as_uri(), TINY_SHA256)
    assert (raw / tiny_zip.name).read_bytes() == tiny_zip.read_bytes()
    assert len(rows) == 420
    assert rows == sources.gtsrb_index(raw / tiny_zip.name)


def test_gtsrb_wrong_sha_leaves_no_archive(tiny_zip, tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        sources.gtsrb(raw, tiny_zip.as_uri(), "0" * 64)
    assert not any(raw.iterdir())


def test_gtsrb_index_without_csv_raises(tmp_path):
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("images/a.ppm", _ppm())
    with pytest.raises(PipelineError, match="no GT-000NN.csv"):
        sources.gtsrb_index(z)


def test_gtsrb_index_csv_listing_missing_image_raises(tmp_path):
    text = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000_00099.ppm;1;1;0;0;1;1;3\n"
    z = _gtsrb_zip(tmp_path / "g.zip", {3: 1}, csv_override={3: text})
    with pytest.raises(PipelineError) as info:
        sources.gtsrb_index(z)
    assert "00000_00099.ppm" in str(info.value)


def test_gtsrb_index_csv_without_header_raises(tmp_path):
    z = _gtsrb_zip(tmp_path / "g.zip", {3: 1}, csv_override={3: "00000_00000.ppm;12;10;3\n"})
    with pytest.raises(PipelineError, match="Filename/ClassId"):
        sources.gtsrb_index(z)


def test_gtsrb_index_bom_and_zero_padded_class_ids(tmp_path):
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId",
             "00000_00000.ppm;12;10;1;1;11;9;07", "00003_00000.ppm;12;10;1;1;11;9;00007"]  # zero-padded ids
    z = tmp_path / "bom.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("GTSRB/Final_Training/Images/00007/00000_00000.ppm", _ppm())
        zf.writestr("GTSRB/Final_Training/Images/00007/00003_00000.ppm", _ppm())
        zf.writestr("GTSRB/Final_Training/Images/00007/GT-00007.csv", ("\ufeff" + "\n".join(lines)).encode("utf-8"))
    rows = sources.gtsrb_index(z)
    assert [(r["label"], r["group"]) for r in rows] == [("7", "7_00000"), ("7", "7_00003")]


# ------------------------------------------------------------------ limit_per_class
def test_limit_per_class_zero_keeps_all(tiny_zip):
    rows = sources.gtsrb_index(tiny_zip)
    assert sources.limit_per_class(rows, 0) == rows


@pytest.mark.parametrize("limit, groups_per_class", [(1, 1), (30, 1), (31, 2), (1000, 2)])
def test_limit_per_class_keeps_whole_groups(tiny_zip, limit, groups_per_class):
    rows = sources.gtsrb_index(tiny_zip)
    kept = sources.limit_per_class(rows, limit)
    by_group = defaultdict(int)
    for r in kept:
        by_group[r["group"]] += 1
    assert set(by_group.values()) == {30}  # never a partial group
    per_class = Counter(r["label"] for r in kept)
    assert per_class == {c: 30 * groups_per_class for c in TINY_CLASSES}
    assert all(r in rows for r in kept)


def test_limit_per_class_deterministic_sorted_groups():
    rows = [{"path": f"p{g}{i}", "label": "a" if g in "xy" else "b", "group": g} for g in "yxzw" for i in range(2)]
    kept = sources.limit_per_class(rows, 1)
    assert sorted({r["group"] for r in kept}) == ["w", "x"]  # first group of each class in sorted order


# ------------------------------------------------------------------ digits
def test_digits_writes_pngs_and_rows(tmp_path):
    from sklearn.datasets import load_digits

    rows = sources.digits(tmp_path)
    bunch = load_digits()
    assert len(rows) == len(bunch.target) == 1797
    assert {r["label"] for r in rows} == {str(d) for d in range(10)}
    assert len({r["path"] for r in rows}) == len(rows)
    for i in (0, 1, 500, 1796):
        r = rows[i]
        assert r["label"] == str(int(bunch.target[i]))
        assert r["group"] == r["path"]
        assert r["path"] == f"digits/{r['label']}/{i:04d}.png"
        f = tmp_path / r["path"]
        with Image.open(f) as img:
            assert img.format == "PNG" and img.size == (8, 8)
            pixels = np.asarray(img)
        expected = np.clip(np.rint(bunch.images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        assert np.array_equal(pixels, expected)
    assert sum(1 for _ in tmp_path.rglob("*.png")) == 1797
