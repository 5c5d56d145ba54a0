"""The decoded-image cache gives exactly what direct decoding gives, and goes stale when its inputs change."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlpipe import models
from tlpipe.data import cache, images, manifest
from tlpipe.inference import Preproc, predict_logits


def make_split(tmp: Path, n: int = 6) -> tuple[Path, Path]:
    raw, split = tmp / "raw", tmp / "split"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"img/{i}.png"
        (raw / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(raw / rel)
        rows.append({"path": rel, "label": "a" if i % 2 else "b", "group": rel})
    for s in manifest.SPLITS:
        manifest.write(split / f"{s}.csv", rows)
    return raw, split


def test_cache_matches_direct_decoding_and_logits(tmp_path: Path) -> None:
    raw, split = make_split(tmp_path)
    out = tmp_path / "cache"
    counts = cache.build(split, raw, out, 32)
    assert counts == {"train": 6, "valid": 6, "test": 6}
    cached = cache.load(split, "train", raw, 32, out)
    assert isinstance(cached, np.memmap)
    direct = images.load_array([r["path"] for r in manifest.read(split / "train.csv")], raw, 32)
    np.testing.assert_array_equal(np.asarray(cached), direct)
    torch.manual_seed(0)
    net = models.build("resnet18", 2, pretrained=False)
    pp = Preproc(models.IMAGENET_MEAN, models.IMAGENET_STD, 32, torch.device("cpu"))
    to_t = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    a = predict_logits(net, to_t(cached), replace(pp, batch=4))
    b = predict_logits(net, to_t(direct), replace(pp, batch=4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cache_goes_stale_when_size_or_manifest_changes(tmp_path: Path) -> None:
    raw, split = make_split(tmp_path)
    out = tmp_path / "cache"
    cache.build(split, raw, out, 16)
    assert cache.is_fresh(split, out, "valid", 16)
    assert not cache.is_fresh(split, out, "valid", 32)
    rows = manifest.read(split / "valid.csv")[:-1]
    manifest.write(split / "valid.csv", rows)
    assert not cache.is_fresh(split, out, "valid", 16)
    rebuilt = cache.load(split, "valid", raw, 16, out)  # stale: decoded again, matching the new manifest
    assert rebuilt.shape == (5, 16, 16, 3) and not isinstance(rebuilt, np.memmap)
    assert cache.is_fresh(split, out, "train", 16)


def test_splitdir_images_of_chosen_rows_are_those_rows_of_the_whole_split(tmp_path: Path) -> None:
    """SplitDir.images(split, size, rows): the chosen manifest rows, in the order asked, from the cache or decoded."""
    from tlpipe.data.splitdir import SplitDir

    raw, split = make_split(tmp_path)
    cache.build(split, raw, tmp_path / "cache", 16)
    for folder in (SplitDir(split, raw, tmp_path / "cache"), SplitDir(split, raw, None)):
        whole = folder.images("train", 16)
        assert whole.shape == (6, 3, 16, 16) and whole.dtype == torch.uint8
        torch.testing.assert_close(folder.images("train", 16, [4, 1, 3]), whole[[4, 1, 3]], rtol=0, atol=0)
        assert folder.images("train", 16, []).shape == (0, 3, 16, 16)
