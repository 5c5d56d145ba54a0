"""data.bad_images (skip | error) and the download/split stage scripts, run as subprocesses on every
new source: filelist, imagefolder (with and without split folders), cifar10, plus unreachable URLs."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import _datafix as D
from tlpipe.data import checks, manifest
from tlpipe.errors import PipelineError


def _img(mode: str, fmt: str = "PNG", size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (120, 60, 200)).convert(mode) if mode != "I;16" else Image.new("I;16", size, 40000)
    img.save(buf, format=fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    """A 9000 x 9000 one-bit PNG: ~10 KB on disk, 81 megapixels decoded (limit 64)."""
    buf = io.BytesIO()
    Image.new("1", (9000, 9000), 0).save(buf, format="PNG")
    return buf.getvalue()


BAD = {  # file name -> (bytes, words the reason must contain)
    "truncated.jpg": (D.jpeg(size=(64, 64))[:200], "cannot decode"),
    "empty.png": (b"", "empty file"),
    "text.jpg": (b"this is a text file, not a JPEG\n", "cannot decode"),
    "bomb.png": (_bomb(), "decompression bomb"),
}
CONVERTED = {"gray.png": _img("L"), "palette.png": _img("P"), "rgba.png": _img("RGBA"),
             "cmyk.jpg": _img("CMYK", "JPEG"), "sixteen.png": _img("I;16")}


def _folder_with_bad(root: Path) -> Path:
    D.image_folder(root, {"cat": 4, "dog": 4})
    for name, (data, _) in BAD.items():
        D.write(root / "cat" / name, data)
    for name, data in CONVERTED.items():
        D.write(root / "dog" / name, data)
    return root


# ------------------------------------------------------------------ checks.scan (in process)
def test_scan_skip_and_error(tmp_path):
    raw = _folder_with_bad(tmp_path / "raw")
    rows = [{"path": p.relative_to(raw).as_posix(), "label": p.parent.name, "group": p.name}
            for p in sorted(raw.rglob("*.*"))]
    good, bad = checks.scan(raw, rows, "skip")
    assert len(good) == 8 + len(CONVERTED) and len(bad) == len(BAD)
    reasons = {Path(b["path"]).name: b["reason"] for b in bad}
    for name, (_, words) in BAD.items():
        assert words in reasons[name], (name, reasons[name])
        assert not (raw / "cat" / name).exists()  # a skipped copy is removed
    assert {Path(r["path"]).name for r in good} >= set(CONVERTED)

    raw2 = _folder_with_bad(tmp_path / "raw2")
    with pytest.raises(PipelineError) as info:
        checks.scan(raw2, [{**r, "source": f"/src/{r['path']}"} for r in rows], "error")
    msg = str(info.value)
    assert msg.startswith("bad image /src/cat/") and "\n" not in msg and "data.bad_images: skip" in msg


def test_require_two_classes():
    with pytest.raises(PipelineError, match="only class 'a'.*at least two"):
        checks.require_classes([{"label": "a"}], "imagefolder x")
    with pytest.raises(PipelineError, match="no images"):
        checks.require_classes([], "imagefolder x")
    assert checks.require_classes([{"label": "10"}, {"label": "9"}], "x") == ["9", "10"]


# ------------------------------------------------------------------ stage scripts as subprocesses
def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _imagefolder_repo(tmp_path: Path, policy: str) -> tuple[Path, Path]:
    src = _folder_with_bad(tmp_path / "pets")
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "imagefolder", "data.root": str(src),
                                            "data.bad_images": policy,
                                            "data.known_classes": {"cat": "cat", "dog": "dog"}})
    return repo, src


def test_stage_bad_images_skip(tmp_path):
    repo, src = _imagefolder_repo(tmp_path, "skip")
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 0, proc.stderr
    assert "4 bad image(s) skipped" in proc.stdout
    index = manifest.read(repo / "data/raw/index.csv")
    assert Counter(r["label"] for r in index) == {"cat": 4, "dog": 4 + len(CONVERTED)}
    bad = _csv(repo / "data/raw/bad_images.csv")
    assert sorted(b["path"] for b in bad) == sorted(str(src / "cat" / n) for n in BAD)
    assert all(b["reason"] for b in bad)
    assert json.loads((repo / "metrics/data.json").read_text()) == {"images": 4 + 4 + len(CONVERTED),
                                                                     "classes": 2, "bad_images": 4}
    assert not any((repo / "data/raw/images/cat" / n).exists() for n in BAD)


def test_stage_bad_images_error(tmp_path):
    repo, src = _imagefolder_repo(tmp_path, "error")
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad image ")
    named = lines[0].split()[3].rstrip(":")
    assert Path(named).parent == src / "cat" and Path(named).name in BAD
    assert not (repo / "data/raw").exists() and not (repo / "metrics/data.json").exists()
    assert not (repo / "data").exists() or not any((repo / "data").iterdir())  # no half-written temp folder


def test_stage_fewer_than_two_classes(tmp_path):
    src = D.image_folder(tmp_path / "one", {"cat": 3})
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "imagefolder", "data.root": str(src)})
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 2 and "only class 'cat'" in proc.stderr and str(src) in proc.stderr
    assert not (repo / "data/raw").exists()


def test_stage_unreachable_url_fails_at_once(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/cifar-10-python.tar.gz"
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "cifar10", "data.url": url})
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "file:///" in lines[0]
    assert not (repo / "data/raw").exists()


def test_stage_not_an_archive(tmp_path):
    fake = tmp_path / "images.tar.gz"
    fake.write_text("<html>a login page, not an archive</html>")
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "imagefolder", "data.url": fake.as_uri()})
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 2 and "not a zip or tar archive" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ end to end: download + split per source
def _download_and_split(repo: Path) -> dict:
    for stage in ("download", "split"):
        proc = D.run_stage(repo, stage)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
    return json.loads((repo / "data/split/split_report.json").read_text())


def _split_rows(repo: Path, name: str = "split") -> dict[str, list[dict]]:
    return {s: manifest.read(repo / f"data/{name}/{s}.csv") for s in manifest.SPLITS}


def test_e2e_filelist_zip_over_http(tmp_path, http_server):
    src = tmp_path / "birds"
    train, test = [], []
    for label in range(3):
        for i in range(10):
            rel = f"img/{label}_{i}.jpg"
            D.write(src / rel, D.jpeg((80 * label, 10 * i, 40)))
            (test if i < 2 else train).append(f"{rel} {label}")
    D.write(src / "train.txt", "\n".join(train).encode())
    D.write(src / "test.txt", "\n".join(test).encode())
    www = tmp_path / "www"
    www.mkdir()
    z = D.pack(src, www / "birds.zip")
    repo = D.stage_repo(tmp_path / "repo", {
        "data.dataset": "filelist", "data.url": f"{http_server(www)}/birds.zip", "data.sha256": D.digest(z, "sha256"),
        "data.train_list": "train.txt", "data.test_list": "test.txt", "data.known_classes": {0: "a", 1: "b", 2: "c"}})
    report = _download_and_split(repo)
    assert report["fixed_by_data"] == ["test", "train"] and report["leak_free"]
    assert report["images"] == {"train": 21, "valid": 3, "test": 6}
    splits = _split_rows(repo)
    assert sorted(r["path"].split("::")[1] for r in splits["test"]) == sorted(t.split()[0] for t in test)
    assert (repo / "data/raw/birds.zip").read_bytes() == z.read_bytes()


def test_e2e_imagefolder_split_folders_tar_over_http(tmp_path, http_server):
    src = tmp_path / "src"
    D.image_folder(src, {"cat": 6, "dog": 5}, "train")
    D.image_folder(src, {"cat": 2, "dog": 2}, "valid")
    D.image_folder(src, {"cat": 3, "dog": 1}, "test")
    www = tmp_path / "www"
    www.mkdir()
    D.pack(src, www / "pets.tar.gz", wrapper="pets")
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "imagefolder", "data.url": f"{http_server(www)}/pets.tar.gz",
                                            "data.known_classes": {"cat": "cat", "dog": "dog"}})
    report = _download_and_split(repo)
    assert report["fixed_by_data"] == ["test", "train", "valid"]
    assert report["per_class"] == {"cat": {"train": 6, "valid": 2, "test": 3}, "dog": {"train": 5, "valid": 2, "test": 1}}
    for s, part in _split_rows(repo).items():
        assert all(f"::pets/{s}/" in r["path"] for r in part)
    assert sorted(p.name for p in (repo / "data/raw").iterdir()) == ["bad_images.csv", "index.csv", "pets.zip"]


def test_e2e_imagefolder_local_per_class_counts(tmp_path):
    src = D.image_folder(tmp_path / "flowers", {"daisy": 12, "rose": 9, "tulip": 10})
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "imagefolder", "data.root": str(src),
                                            "split.valid_per_class": 3, "split.test_per_class": 2,
                                            "data.known_classes": {"daisy": "daisy", "rose": "rose"}})
    report = _download_and_split(repo)
    assert "fixed_by_data" not in report
    assert report["per_class"] == {"daisy": {"train": 7, "valid": 3, "test": 2}, "rose": {"train": 4, "valid": 3, "test": 2}}
    index = manifest.read(repo / "data/raw/index.csv")
    assert "split" not in index[0] and len(index) == 31

    D.set_params(repo, {"split.valid_per_class": 6, "split.test_per_class": 4})  # rose: 9 images
    proc = D.run_stage(repo, "split")
    assert proc.returncode == 2 and "class 'rose' has 9 image(s)" in proc.stderr

    D.set_params(repo, {"split.valid_per_class": 0, "split.test_per_class": 0,
                        "data.known_classes": {"daisy": "daisy", "iris": "iris"}})
    proc = D.run_stage(repo, "split")
    assert proc.returncode == 2 and "iris" in proc.stderr and "have no images" in proc.stderr


def test_e2e_cifar10_fake_over_http(tmp_path, http_server):
    www = tmp_path / "www"
    www.mkdir()
    tar, _ = D.cifar_tarball(www / "cifar-10-python.tar.gz", per_batch=10)
    repo = D.stage_repo(tmp_path / "repo", {
        "data.dataset": "cifar10", "data.url": f"{http_server(www)}/cifar-10-python.tar.gz",
        "data.md5": D.digest(tar, "md5"), "data.known_classes": {0: "airplane", 1: "automobile"},
        "unknown.classes": [2, 3], "unknown.holdout_classes": [4], "unknown.train_images": 6,
        "unknown.valid_images": 2, "unknown.test_images": 2, "unknown.holdout_test_images": 1})
    report = _download_and_split(repo)
    assert report["fixed_by_data"] == ["test", "train"]
    assert report["per_class"] == {"airplane": {"train": 4, "valid": 1, "test": 1},
                                   "automobile": {"train": 4, "valid": 1, "test": 1}}
    assert all("::test/" in r["path"] for r in _split_rows(repo)["test"])
    assert json.loads((repo / "metrics/data.json").read_text()) == {"images": 60, "classes": 10, "bad_images": 0}
    assert json.loads((repo / "data/raw/cifar10_labels.json").read_text())["9"] == "truck"
    proc = D.run_stage(repo, "add_unknown_class")
    assert proc.returncode == 0, proc.stderr
    unknown = _split_rows(repo, "split_unknown")
    assert all("::test/" in r["path"] for r in unknown["test"])
    assert all("::train/" in r["path"] for s in ("train", "valid") for r in unknown[s])
    assert Counter(r["label"] for r in unknown["test"])["unknown"] == 3


def test_e2e_cifar10_wrong_md5(tmp_path, http_server):
    www = tmp_path / "www"
    www.mkdir()
    D.cifar_tarball(www / "c.tar.gz", per_batch=2)
    repo = D.stage_repo(tmp_path / "repo", {"data.dataset": "cifar10", "data.url": f"{http_server(www)}/c.tar.gz",
                                            "data.md5": "f" * 32})
    proc = D.run_stage(repo, "download")
    assert proc.returncode == 2 and "md5 mismatch" in proc.stderr and not (repo / "data/raw").exists()
