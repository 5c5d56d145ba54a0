"""Every reference workflow runs from its preset: `tlpipe-preset <name>`, point data.* at generated data of the
workflow's shape (served over loopback where a URL is involved), `dvc repro`. Epochs and per-class counts are
cut so each run takes a minute or two on 2 CPU cores; everything else is the preset's.

torchvision backbones read their ImageNet weights from the torch hub cache; here TORCH_HOME holds
randomly initialised weights under the real file names, so the cache path is the one exercised (and
accuracy is not: the learning itself is tested on real weights by test_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from _datafix import cifar_tarball, digest
from _support import SHARED, serve_directory
from test_e2e import LIGHT_REPORTS, commit, copy_repo, declared_outputs, dvc, set_params, sh

pytestmark = pytest.mark.slow

SHORT = {"train_head.epochs": 3, "finetune.epochs": 1, "retrain.head.epochs": 2, "retrain.finetune.epochs": 1,
         **LIGHT_REPORTS}
# a preset changes the data source, backbone and training: the stages up to both evaluations test that
# (audit, robustness, export, summary and the model card are backbone-agnostic and run in test_e2e)
UP_TO_EVALUATE = ("evaluate@finetuned", "evaluate@retrained")
TINY_ZIP = SHARED / "datasets/gtsrb/tiny/GTSRB_tiny.zip"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """TORCH_HOME with randomly initialised torchvision weights named as torchvision expects them."""
    import torchvision

    home = tmp_path / "torch_home"
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)

    def add(name: str) -> None:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), folder / Path(url).name)

    monkeypatch.setenv("TORCH_HOME", str(home))
    return add


def _pattern(cls: int, i: int, size: int) -> Image.Image:
    """Class-dependent colour and stripe direction, with per-image noise."""
    g = torch.Generator().manual_seed(cls * 1000 + i)
    base = torch.tensor([(70 * cls) % 256, (150 + 40 * cls) % 256, (30 * cls + 90) % 256], dtype=torch.float32)
    img = base.view(1, 1, 3).expand(size, size, 3).clone()
    stripes = (torch.arange(size) // 4 % 2).float() * 60
    img += stripes.view(-1, 1, 1) if cls % 2 else stripes.view(1, -1, 1)
    img += 20 * torch.randn(size, size, 3, generator=g)
    return Image.fromarray(img.clamp(0, 255).to(torch.uint8).numpy())


def _preset(repo: Path, name: str) -> None:
    sh([sys.executable, "-m", "tlpipe.config.presets", name], repo)


def _outputs_exist(repo: Path) -> None:
    for path in declared_outputs(repo):
        assert path.exists(), path


def _accuracy(repo: Path, model: str) -> float:
    return json.loads((repo / f"metrics/evaluate_{model}.json").read_text())["accuracy"]


def test_food_from_file_lists(tmp_path, hub_cache):
    hub_cache("resnet18")
    data = tmp_path / "food"
    classes = ["apple_pie", "pizza", "sushi"]
    lines = {"train.txt": [], "test.txt": []}
    for c, name in enumerate(classes):
        for i in range(14):
            rel = f"images/{name}/{i:03d}.jpg"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            _pattern(c, i, 48).save(data / rel, quality=92)
            lines["test.txt" if i >= 10 else "train.txt"].append(f"{rel} {name}")
    for f, ls in lines.items():
        (data / f).write_text("\n".join(ls) + "\n")
    archive = tmp_path / "served" / "food.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(data.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(data).as_posix())
    repo = copy_repo(tmp_path / "repo")
    _preset(repo, "food")
    with serve_directory(archive.parent) as base:
        set_params(repo, {**SHORT, "data.url": f"{base}/food.zip", "data.sha256": digest(archive, "sha256"),
                          "split.train": 0.8, "split.valid": 0.2, "split.test": 0.0})
        params = yaml.safe_load((repo / "params.yaml").read_text())
        assert params["model"]["backbone"] == "resnet18" and params["augment"]["engine"] == "v2"
        commit(repo, "food")
        dvc("repro", *UP_TO_EVALUATE, cwd=repo)
    _outputs_exist(repo)
    test = (repo / "data/split/test.csv").read_text()
    assert test.count("\n") - 1 == 12  # the test list is the test split
    info = json.loads((repo / "data/split_unknown/classes.json").read_text())
    assert info["classes"] == classes  # known_classes: all, no unknown class
    ckpt = torch.load(repo / "models/finetuned.pt", weights_only=True)
    assert ckpt["meta"]["backbone"] == "resnet18" and ckpt["meta"]["input_size"] == 224
    assert 0 <= _accuracy(repo, "finetuned") <= 1  # random stand-in weights: only the workflow is under test


def test_sign_digits_from_a_folder_then_predict_one_image(tmp_path, hub_cache):
    hub_cache("mobilenet_v2")
    data = tmp_path / "Dataset"
    for c in range(10):
        for i in range(9):
            (data / str(c)).mkdir(parents=True, exist_ok=True)
            _pattern(c, i, 40).save(data / str(c) / f"IMG_{c}_{i}.JPG", format="JPEG", quality=92)
    repo = copy_repo(tmp_path / "repo")
    _preset(repo, "sign_digits")
    set_params(repo, {**SHORT, "data.root": str(data), "split.valid_per_class": 2, "split.test_per_class": 2,
                      "model.input_size": 64})
    commit(repo, "signs")
    dvc("repro", *UP_TO_EVALUATE, cwd=repo)
    _outputs_exist(repo)
    report = json.loads((repo / "data/split/split_report.json").read_text())
    assert all(n == {"train": 5, "valid": 2, "test": 2} for n in report["per_class"].values()), report["per_class"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["backbone"] == "mobilenet_v2" and params["finetune"]["unfreeze_blocks"] == 5
    # save the model, load it back, predict one image path
    one = data / "7" / "IMG_7_0.JPG"
    out = subprocess.run([sys.executable, "-m", "tlpipe.predict", str(one), "--model", "models/finetuned.pt",
                          "--json"], cwd=repo, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo / "src")})
    assert out.returncode == 0, out.stderr
    pred = json.loads(out.stdout)
    assert pred[0]["path"].endswith("IMG_7_0.JPG") and len(pred[0]["top"]) >= 1


def test_cifar10_official_layout_over_loopback(tmp_path, hub_cache):
    hub_cache("resnet18")
    served = tmp_path / "served"
    served.mkdir()
    tarball, _ = cifar_tarball(served / "cifar-10-python.tar.gz", per_batch=20)
    repo = copy_repo(tmp_path / "repo")
    _preset(repo, "cifar10")
    with serve_directory(served) as base:
        set_params(repo, {**SHORT, "data.url": f"{base}/cifar-10-python.tar.gz", "data.md5": digest(tarball, "md5")})
        commit(repo, "cifar")
        dvc("repro", *UP_TO_EVALUATE, cwd=repo)
    _outputs_exist(repo)
    m = json.loads((repo / "reports/retrained/metrics.json").read_text())
    assert set(m["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck"}
    assert (repo / "data/split/test.csv").read_text().count("\n") - 1 == 20  # the official test batch
    assert m["open_set"]["scores"]["msp"]["auroc"] is None  # no unknown images: no ROC to report


@pytest.mark.skipif(not TINY_ZIP.is_file(), reason=f"fixture {TINY_ZIP} not found (CI puts ../shared beside the clone)")
def test_gtsrb_with_resnet34(tmp_path, hub_cache):
    hub_cache("resnet34")
    repo = copy_repo(tmp_path / "repo")
    _preset(repo, "gtsrb_resnet34")
    with serve_directory(TINY_ZIP.parent) as base:
        set_params(repo, {**SHORT, "data.url": f"{base}/GTSRB_tiny.zip", "split.by_group": False,
                          "unknown.classes": [1, 25], "unknown.train_images": 40, "unknown.valid_images": 20,
                          "unknown.test_images": 20, "unknown.holdout_classes": [38],
                          "unknown.holdout_test_images": 20})
        commit(repo, "gtsrb resnet34")
        dvc("repro", *UP_TO_EVALUATE, cwd=repo)
    _outputs_exist(repo)
    ckpt = torch.load(repo / "models/retrained.pt", weights_only=True)
    assert ckpt["meta"]["backbone"] == "resnet34" and ckpt["meta"]["classes"][-1] == "unknown"
