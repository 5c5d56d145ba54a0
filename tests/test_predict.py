"""predict: top-k with the checkpoint's temperature, folders expanded, clear errors, CLI exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _support import REPO
from tlpipe import checkpoint, models, predict
from tlpipe.data.images import decode
from tlpipe.data.transforms import normalize
from tlpipe.errors import PipelineError

CLASSES = ["a", "b", "c"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = models.build("resnet18", len(CLASSES), pretrained=False)
    path = tmp_path / "m.pt"
    checkpoint.save(path, net, {"backbone": "resnet18", "classes": CLASSES, "input_size": 32,
                                "mean": list(models.IMAGENET_MEAN), "std": list(models.IMAGENET_STD),
                                "temperature": 2.5})
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        arr = rng.integers(0, 255, (40, 30, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr[..., :3] if mode != "RGBA" else arr)
        (img.convert(mode) if mode == "L" else img).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image, ignored by folder expansion")
    return tmp_path / "imgs"


def test_probabilities_use_the_checkpoint_temperature(model: Path, images: Path) -> None:
    files = predict.expand([images])
    assert [f.name for f in files] == ["0.png", "1.png", "2.png"]
    classes, probs = predict.probabilities(model, files)
    net, meta = checkpoint.restore(model)
    net.eval()
    x = torch.stack([torch.from_numpy(decode(f.read_bytes(), str(f), 32)).permute(2, 0, 1) for f in files])
    expected = torch.softmax(net(normalize(x, meta["mean"], meta["std"])) / 2.5, 1)
    assert classes == CLASSES
    torch.testing.assert_close(probs, expected.detach())
    top = predict.top_k(classes, probs, files, 2)
    assert len(top[0]["top"]) == 2 and top[0]["top"][0]["probability"] >= top[0]["top"][1]["probability"]


def test_missing_file_and_corrupt_image(model: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="nope.png"):
        predict.expand([tmp_path / "nope.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(PipelineError, match="bad.png"):
        predict.probabilities(model, [bad])


def test_cli_json_chart_and_exit_status(model: Path, images: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tlpipe.predict", "--model", str(model), "--json", "--top-k", "3",
           "--chart", str(tmp_path / "p.png"), str(images)]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout[: out.stdout.rindex("]") + 1])
    assert len(results) == 3 and {t["class"] for t in results[0]["top"]} == set(CLASSES)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "tlpipe.predict", "--model", str(tmp_path / "none.pt"),
                          str(images)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: checkpoint not found") and "Traceback" not in bad.stderr
