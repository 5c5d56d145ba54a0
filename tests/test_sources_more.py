"""New dataset sources: tar safety, filelist, imagefolder, cifar10 (restricted unpickling), fixed
splits and per-class counts in the split, data errors."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import stat
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import _datafix as D
from tlpipe.data import archive as arc
from tlpipe.data import cifar, folders, images, manifest, sources, tree
from tlpipe.errors import PipelineError

FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def _data(**kw) -> dict:
    base = {"dataset": "imagefolder", "url": "", "sha256": "", "md5": "", "root": "", "train_list": "",
            "test_list": "", "bad_images": "error", "max_per_class": 0}
    return {**base, **kw}


def _decoded(raw: Path, row: dict) -> np.ndarray:
    reader = images.Reader(raw)
    try:
        return images.decode(reader.read(row["path"]), row["path"], None)
    finally:
        reader.close()


# ------------------------------------------------------------------ tar safety
def _info(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize("entry, words", [
    (_info("../evil.png", tarfile.REGTYPE), "escapes"),
    (_info("ok/../../evil.png", tarfile.REGTYPE), "escapes"),
    (_info("/etc/evil.png", tarfile.REGTYPE), "escapes"),
    (_info("C:/evil.png", tarfile.REGTYPE), "escapes"),
    (_info("cls/link.png", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
    (_info("cls/hard.png", tarfile.LNKTYPE, "cls/a.png"), "hardlink"),
    (_info("cls/dev", tarfile.CHRTYPE), "device"),
    (_info("cls/blk", tarfile.BLKTYPE), "device"),
    (_info("cls/fifo", tarfile.FIFOTYPE), "device"),
])
def test_tar_refuses_unsafe_entries(tmp_path, entry, words):
    bad = D.tar_with(tmp_path / "bad.tar", [entry], {"cls/a.png": D.png()})
    dest = tmp_path / "out.zip"
    with pytest.raises(PipelineError) as info:
        arc.tar_to_zip(bad, dest)
    msg = str(info.value)
    assert words in msg and str(bad) in msg and entry.name in msg and "\n" not in msg
    assert not dest.exists() and not (tmp_path / "out.zip.part").exists()
    assert not (tmp_path / "evil.png").exists() and not Path("/etc/evil.png").exists()


def test_tar_gz_repacked_into_zip_with_folders(tmp_path):
    src = D.image_folder(tmp_path / "src", {"a": 2, "b": 1})
    (src / "empty").mkdir()
    tgz = D.pack(src, tmp_path / "x.tar.gz")
    out = arc.tar_to_zip(tgz, tmp_path / "x.zip")
    with arc.open_zip(out) as zf:
        names = set(zf.namelist())
        assert {"a/000.png", "a/001.png", "b/000.png", "empty/"} <= names
        assert zf.read("a/001.png") == (src / "a/001.png").read_bytes()
    dotted = arc.tar_to_zip(D.pack(src, tmp_path / "dot.tar", wrapper="."), tmp_path / "dot.zip")  # tar -C src .
    with arc.open_zip(dotted) as zf:
        assert {"a/000.png", "b/000.png", "empty/"} <= set(zf.namelist())


@pytest.mark.parametrize("content", [b"", b"just some text, not an archive\n" * 20, b"\x1f\x8b\x08\x00broken gzip"])
def test_not_an_archive_is_one_error(tmp_path, content):
    f = tmp_path / "data.tar.gz"
    f.write_bytes(content)
    with pytest.raises(PipelineError) as info:
        arc.kind(f)
    assert "not a zip or tar archive" in str(info.value) and str(f) in str(info.value)


def test_truncated_tar_is_one_error(tmp_path):
    src = D.image_folder(tmp_path / "src", {"a": 3, "b": 3})
    tgz = D.pack(src, tmp_path / "x.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    with pytest.raises(PipelineError, match="not a readable tar archive"):
        arc.tar_to_zip(cut, tmp_path / "cut.zip")
    assert not (tmp_path / "cut.zip").exists()


def test_zip_device_entry_refused(tmp_path):
    bad = tmp_path / "dev.zip"
    info = zipfile.ZipInfo("cls/dev")
    info.create_system = 3
    info.external_attr = (stat.S_IFCHR | 0o644) << 16
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("cls/a.png", D.png())
        zf.writestr(info, b"")
    with pytest.raises(PipelineError, match="not a regular file"):
        arc.open_zip(bad)


def test_unsafe_tar_refused_through_the_source(tmp_path):
    bad = D.tar_with(tmp_path / "bad.tar", [_info("../../evil.png", tarfile.REGTYPE)],
                     {"cat/a.png": D.png(), "dog/a.png": D.png()})
    raw = tmp_path / "raw"
    with pytest.raises(PipelineError, match="escapes"):
        sources.build(raw, _data(url=bad.as_uri()))


# ------------------------------------------------------------------ imagefolder
def test_imagefolder_local_without_splits(tmp_path):
    root = D.image_folder(tmp_path / "pets", {"cat": 4, "dog": 3})
    (root / "README.txt").write_text("not an image, ignored")
    (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = sources.build(raw, _data(root=str(root)))
    assert Counter(r["label"] for r in rows) == {"cat": 4, "dog": 3}
    assert all(r["split"] == "" and r["group"] == r["path"] for r in rows)
    assert rows[0]["path"] == "images/cat/000.png"
    assert (raw / "images/cat/000.png").read_bytes() == (root / "cat/000.png").read_bytes()
    assert rows[0]["source"] == str(root / "cat/000.png")


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_imagefolder_with_split_folders_as_archive_url(tmp_path, http_server, suffix):
    src = tmp_path / "src"
    D.image_folder(src, {"cat": 5, "dog": 4}, "train")
    D.image_folder(src, {"cat": 2, "dog": 2}, "val")
    D.image_folder(src, {"cat": 1, "dog": 3}, "test")
    www = tmp_path / "www"
    www.mkdir()
    D.pack(src, www / f"pets{suffix}", wrapper="pets")  # one wrapper folder: read inside it
    base = http_server(www)
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = sources.build(raw, _data(url=f"{base}/pets{suffix}"))
    got = Counter((r["split"], r["label"]) for r in rows)
    assert got == {("train", "cat"): 5, ("train", "dog"): 4, ("valid", "cat"): 2, ("valid", "dog"): 2,
                   ("test", "cat"): 1, ("test", "dog"): 3}
    assert sorted(p.name for p in raw.iterdir()) == ["pets.zip"]  # a tar is repacked, then removed
    row = next(r for r in rows if r["split"] == "test" and r["label"] == "dog")
    assert row["path"].startswith("pets.zip::pets/test/dog/")
    original = images.decode((src / row["path"].split("::pets/")[1]).read_bytes(), "x", None)
    assert np.array_equal(_decoded(raw, row), original)


def test_imagefolder_empty_class_folder(tmp_path):
    root = D.image_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(PipelineError) as info:
        sources.build(tmp_path / "raw", _data(root=str(root)))
    assert "class folder" in str(info.value) and str(root / "bird") in str(info.value)


def test_imagefolder_empty_class_folder_in_zip(tmp_path):
    src = D.image_folder(tmp_path / "src", {"cat": 2, "dog": 2})
    z = D.pack(src, tmp_path / "d.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("fish/", b"")
    raw = tmp_path / "raw"
    with pytest.raises(PipelineError, match=r"class folder .*d\.zip::fish .*holds no images"):
        sources.build(raw, _data(url=z.as_uri()))


def test_imagefolder_mixed_layout_and_stray_image(tmp_path):
    src = tmp_path / "mixed"
    D.image_folder(src, {"cat": 2, "dog": 2}, "train")
    D.image_folder(src, {"cat": 1}, "")
    with pytest.raises(PipelineError, match="mixes split folders"):
        sources.build(tmp_path / "raw1", _data(root=str(src)))
    flat = D.image_folder(tmp_path / "flat", {"cat": 2, "dog": 2})
    D.write(flat / "stray.png", D.png())
    with pytest.raises(PipelineError, match=r"stray\.png is not inside a class folder"):
        sources.build(tmp_path / "raw2", _data(root=str(flat)))


def test_imagefolder_root_and_url_both_or_neither(tmp_path):
    with pytest.raises(PipelineError, match="exactly one of data.root"):
        sources.build(tmp_path, _data())
    with pytest.raises(PipelineError, match="exactly one of data.root"):
        sources.build(tmp_path, _data(root="x", url="file:///x.zip"))
    with pytest.raises(PipelineError, match="folder not found"):
        sources.build(tmp_path, _data(root=str(tmp_path / "absent")))


# ------------------------------------------------------------------ filelist
def _filelist_src(tmp_path: Path) -> Path:
    src = tmp_path / "birds"
    lines_train, lines_test = ["# path label"], []
    for i in range(8):
        for label, name in ((0, "sparrow"), (3, "robin")):
            rel = f"images/{name} {i}.jpg"  # a space in the path
            D.write(src / rel, D.jpeg((30 * label, 20 * i, 50)))
            (lines_test if i >= 6 else lines_train).append(f"{rel} {label:03d}")
    D.write(src / "lists/train.txt", ("\n".join(lines_train) + "\n\n").encode())
    D.write(src / "lists/test.txt", "\n".join(lines_test).encode())
    return src


def test_filelist_two_lists_from_zip_over_http(tmp_path, http_server):
    src = _filelist_src(tmp_path)
    www = tmp_path / "www"
    www.mkdir()
    z = D.pack(src, www / "birds.zip")
    base = http_server(www)
    raw = tmp_path / "raw"
    raw.mkdir()
    sha = D.digest(z, "sha256")
    rows = sources.build(raw, _data(dataset="filelist", url=f"{base}/birds.zip", sha256=sha,
                                    train_list="lists/train.txt", test_list="lists/test.txt"))
    assert Counter((r["split"], r["label"]) for r in rows) == {("train", "0"): 6, ("train", "3"): 6,
                                                                ("test", "0"): 2, ("test", "3"): 2}
    assert rows[0]["path"] == "birds.zip::images/sparrow 0.jpg"  # '000' -> '0'
    assert _decoded(raw, rows[0]).shape == (16, 16, 3)


def test_filelist_one_list_local_folder_no_split(tmp_path):
    src = _filelist_src(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = sources.build(raw, _data(dataset="filelist", root=str(src), train_list="lists/train.txt"))
    assert len(rows) == 12 and {r["split"] for r in rows} == {""}
    assert (raw / "images/images/robin 0.jpg").is_file()


def test_filelist_list_file_may_be_local_path(tmp_path):
    src = _filelist_src(tmp_path)
    outside = tmp_path / "train_outside.txt"
    outside.write_text((src / "lists/train.txt").read_text())
    rows = sources.build(tmp_path / "raw", _data(dataset="filelist", root=str(src), train_list=str(outside)))
    assert len(rows) == 12


@pytest.mark.parametrize("line, words", [
    ("images/missing.jpg 1", "not in folder"),
    ("../secret.jpg 1", "outside the root"),
    ("justapath.jpg", "expected `path label`"),
])
def test_filelist_bad_lines(tmp_path, line, words):
    src = _filelist_src(tmp_path)
    (src / "lists/train.txt").write_text((src / "lists/train.txt").read_text() + line + "\n")
    with pytest.raises(PipelineError) as info:
        sources.build(tmp_path / "raw", _data(dataset="filelist", root=str(src), train_list="lists/train.txt"))
    assert words in str(info.value) and "train.txt" in str(info.value)


def test_filelist_missing_list_and_duplicates(tmp_path):
    src = _filelist_src(tmp_path)
    with pytest.raises(PipelineError, match="list file 'lists/nope.txt'"):
        sources.build(tmp_path / "r1", _data(dataset="filelist", root=str(src), train_list="lists/nope.txt"))
    with pytest.raises(PipelineError, match="listed twice"):
        sources.build(tmp_path / "r2", _data(dataset="filelist", root=str(src), train_list="lists/train.txt",
                                             test_list="lists/train.txt"))
    with pytest.raises(PipelineError, match="needs data.train_list"):
        sources.build(tmp_path / "r3", _data(dataset="filelist", root=str(src)))


def test_parse_list_normalises():
    got = folders.parse_list("# c\n./a/b c.png  7\r\nx\\y.png cat\n\n", "l.txt")
    assert got == [("a/b c.png", "7"), ("x/y.png", "cat")]


# ------------------------------------------------------------------ cifar10
@pytest.mark.parametrize("py2", [True, False], ids=["python2-pickles", "python3-pickles"])
def test_cifar10_over_http_with_md5(tmp_path, http_server, py2):
    www = tmp_path / "www"
    www.mkdir()
    tar, batches = D.cifar_tarball(www / "cifar-10-python.tar.gz", per_batch=6, py2=py2)
    md5 = D.digest(tar, "md5")
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = sources.build(raw, _data(dataset="cifar10", url=f"{http_server(www)}/cifar-10-python.tar.gz", md5=md5))
    assert len(rows) == 36 and Counter(r["split"] for r in rows) == {"train": 30, "test": 6}
    assert sorted(p.name for p in raw.iterdir()) == ["cifar10.zip", "cifar10_labels.json"]  # tarball removed
    # train images numbered over data_batch_1..5 in order, test from test_batch
    for split, name, j, n in (("train", "data_batch_1", 0, 0), ("train", "data_batch_4", 5, 23),
                              ("test", "test_batch", 2, 2)):
        row = next(r for r in rows if r["path"] == f"cifar10.zip::{split}/{n:05d}.png")
        data, labels = batches[name]
        assert row["label"] == str(labels[j])
        assert np.array_equal(_decoded(raw, row), D.cifar_png_pixels(data, j))


def test_cifar10_md5_mismatch_removes_tarball(tmp_path, http_server):
    www = tmp_path / "www"
    www.mkdir()
    D.cifar_tarball(www / "c.tar.gz", per_batch=2)
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(PipelineError, match="md5 mismatch"):
        sources.build(raw, _data(dataset="cifar10", url=f"{http_server(www)}/c.tar.gz", md5="0" * 32))
    assert list(raw.iterdir()) == []


def test_py2_fixture_really_looks_like_python2():
    text = io.StringIO()
    pickletools.dis(D.py2_pickle({b"data": np.zeros((1, 3072), np.uint8)}), out=text)
    assert "numpy.core.multiarray _reconstruct" in text.getvalue()
    assert "BINSTRING" in text.getvalue() and "BINUNICODE" not in text.getvalue()


def test_cifar10_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (pickle.dumps({"data": Evil()}, protocol=2), pickle.dumps(Evil(), protocol=4)):
        with pytest.raises(PipelineError, match="not a CIFAR-10 batch .*not allowed"):
            cifar.unpickle(payload, "evil_batch")
    assert not marker.exists()


def test_cifar10_batch_shape_and_labels_checked():
    ok = {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}
    assert cifar.batch_arrays(ok, "b")[0].shape == (2, 32, 32, 3)
    with pytest.raises(PipelineError, match="'data' must be a uint8 array"):
        cifar.batch_arrays({**ok, "data": np.zeros((2, 3071), np.uint8)}, "b")
    with pytest.raises(PipelineError, match="'labels' must be 2 ints in 0..9"):
        cifar.batch_arrays({**ok, "labels": [1, 10]}, "b")


def test_cifar10_tarball_missing_batches(tmp_path):
    tar = D.tar_with(tmp_path / "c.tar", [], {"cifar-10-batches-py/data_batch_1": b"x"})
    with pytest.raises(PipelineError, match="lacks batches.meta, data_batch_2"):
        cifar.cifar10(tmp_path / "raw", tar.as_uri())


def test_cifar10_official_url_offline_fails_at_once(tmp_path, no_network):
    with pytest.raises(PipelineError) as info:
        sources.build(tmp_path / "raw", _data(dataset="cifar10"))
    msg = str(info.value)
    assert cifar.URL in msg and "file:///" in msg and "data.url" in msg and "\n" not in msg


# ------------------------------------------------------------------ split: fixed splits, per-class counts
def _rows(label: str, n: int, split: str = "", group_size: int = 1) -> list[dict]:
    return [{"path": f"{split}/{label}/{i:03d}", "label": label, "group": f"{split}{label}g{i // group_size}",
             "split": split} for i in range(n)]


def test_split_keeps_fixed_test_and_carves_valid():
    rows = _rows("a", 18, "train") + _rows("b", 9, "train") + _rows("a", 5, "test") + _rows("b", 4, "test")
    out = manifest.split(rows, FRACTIONS, seed=1)
    assert sorted(r["path"] for r in out["test"]) == sorted(r["path"] for r in rows if r["split"] == "test")
    got = Counter((s, r["label"]) for s, part in out.items() for r in part)
    assert got[("valid", "a")] == 2 and got[("valid", "b")] == 1  # 0.1 / (0.8 + 0.1) of train
    assert got[("train", "a")] == 16 and got[("train", "b")] == 8
    assert manifest.leakage_report(out)["leak_free"]


def test_split_keeps_all_three_fixed():
    rows = _rows("a", 4, "train") + _rows("a", 2, "valid") + _rows("a", 1, "test") + _rows("b", 3, "train") \
        + _rows("b", 1, "valid") + _rows("b", 1, "test")
    out = manifest.split(rows, FRACTIONS, seed=3, per_class={"valid": 50, "test": 50})  # counts: nothing to make
    assert {s: len(v) for s, v in out.items()} == {"train": 7, "valid": 3, "test": 2}
    assert all(r["split"] == s for s, part in out.items() for r in part)


def test_split_per_class_counts():
    rows = _rows("a", 120) + _rows("b", 101)
    out = manifest.split(rows, FRACTIONS, seed=0, per_class={"valid": 90, "test": 10})
    got = Counter((s, r["label"]) for s, part in out.items() for r in part)
    assert got == {("valid", "a"): 90, ("test", "a"): 10, ("train", "a"): 20,
                   ("valid", "b"): 90, ("test", "b"): 10, ("train", "b"): 1}
    again = manifest.split(rows, FRACTIONS, seed=0, per_class={"valid": 90, "test": 10})
    assert again == out


def test_split_per_class_counts_whole_groups():
    rows = _rows("a", 40, group_size=4) + _rows("b", 40, group_size=4)
    out = manifest.split(rows, FRACTIONS, seed=0, per_class={"valid": 0, "test": 6})
    got = Counter((s, r["label"]) for s, part in out.items() for r in part)
    assert got[("test", "a")] == 8  # two groups of 4 reach 6
    assert manifest.leakage_report(out)["leak_free"]


def test_split_class_too_small_for_counts():
    rows = _rows("a", 120) + _rows("tiny", 95)
    with pytest.raises(PipelineError) as info:
        manifest.split(rows, FRACTIONS, seed=0, per_class={"valid": 90, "test": 10})
    assert "'tiny'" in str(info.value) and "95 image(s)" in str(info.value)


def test_split_fixed_split_missing_a_class():
    rows = _rows("a", 10, "train") + _rows("b", 10, "train") + _rows("a", 2, "test")
    with pytest.raises(PipelineError, match="class 'b' has no images in the data's test split"):
        manifest.split(rows, FRACTIONS, seed=0)


def test_split_mixed_split_column_refused():
    rows = _rows("a", 10, "train") + _rows("b", 10)
    with pytest.raises(PipelineError, match="some rows have a split"):
        manifest.split(rows, FRACTIONS, seed=0)


def test_split_without_split_column_is_unchanged():
    rows = [{k: v for k, v in r.items() if k != "split"} for r in _rows("a", 30) + _rows("b", 20)]
    assert manifest.split(rows, FRACTIONS, seed=5) == manifest.split(rows, FRACTIONS, seed=5, per_class={})


def test_unknown_keeps_fixed_test():
    known = {"train": [], "valid": [], "test": []}
    pool = _rows("u", 30, "train") + _rows("u", 10, "test")
    held = _rows("h", 5, "train") + _rows("h", 5, "test")
    out = manifest.with_unknown(known, pool, held, {"train": 12, "valid": 4, "test": 6}, 3, seed=0)
    assert all(r["split"] == "test" for r in out["test"]) and len(out["test"]) == 9
    assert all(r["split"] == "train" for s in ("train", "valid") for r in out[s])
    assert len(out["valid"]) == 4 and len(out["train"]) == 12
    assert manifest.leakage_report(out)["leak_free"]


def test_limit_per_class_keeps_split_shares():
    rows = _rows("a", 50, "train") + _rows("a", 10, "test") + _rows("b", 50, "train") + _rows("b", 10, "test")
    kept = sources.limit_per_class(rows, 12)
    assert Counter((r["split"], r["label"]) for r in kept) == {("train", "a"): 10, ("test", "a"): 2,
                                                                ("train", "b"): 10, ("test", "b"): 2}


def test_tree_unwraps_one_wrapper_folder_only_when_it_holds_folders(tmp_path):
    single = D.image_folder(tmp_path / "one", {"onlyclass": 2})
    t = tree.FolderTree(single)
    assert t.prefix == "" and t.files == ["onlyclass/000.png", "onlyclass/001.png"]
    wrapped = D.image_folder(tmp_path / "w" / "data", {"a": 1, "b": 1})
    t = tree.FolderTree(wrapped.parent)
    assert t.prefix == "data/" and t.files == ["a/000.png", "b/000.png"]
