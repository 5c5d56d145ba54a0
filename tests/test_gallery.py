"""evaluate's gallery of misclassified test images."""

from __future__ import annotations

import torch
from PIL import Image

from tlpipe.evaluation.plots import misclassified_png


def _case(n_wrong: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=g)
    targets = torch.arange(10) % 3
    logits = torch.nn.functional.one_hot(targets, 3).float() * 4
    for i in range(n_wrong):  # predicted as the next class, with rising confidence
        logits[i] = torch.nn.functional.one_hot((targets[i] + 1) % 3, 3).float() * (1 + i)
    return images, targets, logits


def test_gallery_counts_wrong_images_and_draws_a_png(tmp_path):
    images, targets, logits = _case(4)
    out = tmp_path / "g.png"
    assert misclassified_png(out, images, targets, logits, ["a", "b", "c"], "m", limit=3) == 4
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200


def test_gallery_without_mistakes_still_writes_a_png(tmp_path):
    images, targets, logits = _case(0)
    out = tmp_path / "g.png"
    assert misclassified_png(out, images, targets, logits, ["a", "b", "c"], "m", limit=24) == 0
    assert out.is_file()
