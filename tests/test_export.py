"""Export: a checkpoint as a self-contained ONNX model, parity with PyTorch, int8 quantization, predict via .onnx."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _support import REPO
from tlpipe import checkpoint, export, models, predict
from tlpipe.data import manifest
from tlpipe.data.splitdir import SplitDir, write_classes
from tlpipe.data.transforms import normalize
from tlpipe.errors import PipelineError
from tlpipe.inference_onnx import OnnxClassifier

CLASSES = ["a", "b", "c"]
META = {"backbone": "resnet18", "classes": CLASSES, "input_size": 32, "mean": list(models.IMAGENET_MEAN),
        "std": list(models.IMAGENET_STD), "temperature": 1.7, "input_norm": "none"}


def make_split(root: Path, n: int = 36) -> SplitDir:
    """Structured images (each class its own colour and stripes, plus noise) in train/valid/test manifests."""
    raw, folder = root / "raw", root / "split"
    (raw / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        c = i % len(CLASSES)
        arr = rng.integers(0, 80, (28 + i % 5, 30, 3)).astype(np.uint8)
        arr[:, :, c] += 150
        arr[:: 2 + c] //= 2
        Image.fromarray(arr).save(raw / f"img/{i}.png")
        rows.append({"path": f"img/{i}.png", "label": CLASSES[c], "group": str(i)})
    for s in manifest.SPLITS:
        manifest.write(folder / f"{s}.csv", rows)
    write_classes(folder, CLASSES, CLASSES)
    return SplitDir(folder, raw, None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small pretrained=False net whose head learnt a little (so classes differ), exported with int8."""
    root = tmp_path_factory.mktemp("export")
    split = make_split(root)
    torch.manual_seed(0)
    net = models.build("resnet18", len(CLASSES), pretrained=False)
    data = split.data("train", CLASSES, 32)
    with torch.no_grad():  # a least-squares head on the random features: confident, varied predictions
        net.eval()
        feats = net.features(normalize(data.images, META["mean"], META["std"]))
        target = torch.nn.functional.one_hot(data.targets, len(CLASSES)).float() * 6 - 3
        sol = torch.linalg.lstsq(torch.cat([feats, torch.ones(len(feats), 1)], 1), target).solution
        net.head.weight.copy_(sol[:-1].T)
        net.head.bias.copy_(sol[-1])
    ckpt = root / "m.pt"
    checkpoint.save(ckpt, net, META)
    out, metrics = root / "m.onnx", root / "export_m.json"
    result = export.export(ckpt, split, out, metrics, {"seed": 0, "export": {"int8": True}})
    return {"root": root, "split": split, "ckpt": ckpt, "onnx": out, "metrics": metrics, "result": result}


def test_metadata_round_trip(exported) -> None:
    import onnx

    model = onnx.load(str(exported["onnx"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == CLASSES and props["backbone"] == "resnet18"
    assert int(props["input_size"]) == 32 and float(props["temperature"]) == 1.7
    assert json.loads(props["mean"]) == META["mean"] and json.loads(props["std"]) == META["std"]
    clf = OnnxClassifier(exported["onnx"])
    assert clf.meta == META and clf.classes == CLASSES
    (inp,) = clf.session.get_inputs()
    assert inp.shape[1:] == [3, 32, 32] and isinstance(inp.shape[0], str)  # dynamic batch axis
    for n in (1, 5):  # any batch size
        assert clf.probabilities(np.zeros((n, 3, 32, 32), np.uint8)).shape == (n, 3)


def test_fp32_parity_written_to_metrics(exported) -> None:
    written = json.loads(exported["metrics"].read_text())
    assert written == json.loads(json.dumps(exported["result"]))
    fp32 = written["fp32"]
    assert fp32["images"] == 36 and fp32["max_abs_prob_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0


def test_int8_model_runs_and_mostly_agrees(exported) -> None:
    q = exported["result"]["int8"]
    assert Path(q["onnx"]) == exported["onnx"].with_suffix(".int8.onnx") and Path(q["onnx"]).is_file()
    assert q["top1_agreement"] >= 0.8, q
    assert abs(q["accuracy_change"]) <= 0.2 and q["images"] == 36
    assert OnnxClassifier(q["onnx"]).meta == META  # the metadata survives quantization


def test_broken_parity_fails_with_one_clear_error(exported, tmp_path: Path, monkeypatch) -> None:
    int8 = exported["onnx"].with_suffix(".int8.onnx")
    monkeypatch.setattr(export, "to_onnx", lambda net, meta, path: shutil.copy(int8, path))  # not the fp32 net
    metrics = tmp_path / "m.json"
    with pytest.raises(PipelineError, match=r"does not match PyTorch on 36 validation images: max \|Δ probability\|"):
        export.export(exported["ckpt"], exported["split"], tmp_path / "bad.onnx", metrics, {"seed": 0,
                      "export": {"int8": False}})
    assert not metrics.exists()
    ref = np.array([[0.6, 0.4], [0.1, 0.9]])
    export.check_parity(ref, ref + 5e-5, "ok")
    with pytest.raises(PipelineError, match="top-1 agreement 0.0000"):
        export.check_parity(ref, ref[:, ::-1], "flipped")
    tie = np.array([[0.50002, 0.49998]])
    assert export.check_parity(tie, tie[:, ::-1], "tie")["top1_agreement"] == 0.0  # a flip within the tolerance


def test_predict_via_onnx_equals_pt(exported) -> None:
    files = sorted((exported["root"] / "raw" / "img").glob("*.png"))[:7]
    classes, pt = predict.probabilities(exported["ckpt"], files)
    classes_onnx, ox = predict.probabilities(exported["onnx"], files, batch=3)
    assert classes_onnx == classes == CLASSES
    np.testing.assert_allclose(ox.numpy(), pt.numpy(), rtol=0, atol=1e-4)
    code = ("import sys, json; from pathlib import Path; from tlpipe import predict; "
            f"c, p = predict.probabilities(Path({str(exported['onnx'])!r}), [Path({str(files[0])!r})]); "
            "print(json.dumps([p.tolist(), sorted(m for m in sys.modules if m.startswith(('torch.onnx', "
            "'tlpipe.export', 'tlpipe.training', 'onnxruntime.quantization')))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    probs, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(probs[0], pt[0].numpy(), rtol=0, atol=1e-4)
    assert loaded == [], loaded


def test_foreign_onnx_is_one_clear_error(exported, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(exported["onnx"]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(PipelineError, match="not a tlpipe export"):
        OnnxClassifier(tmp_path / "plain.onnx")
    with pytest.raises(PipelineError, match="not found"):
        OnnxClassifier(tmp_path / "missing.onnx")


@pytest.mark.parametrize("mode", ["none", "grayworld", "autolevel", "equalize"])
def test_onnx_photometric_normalisation_matches_torch(mode) -> None:
    """model.input_norm in NumPy (the onnxruntime path) equals the torch path of inference.prepare."""
    from tlpipe.inference import photometric
    from tlpipe.inference_onnx import photometric as photometric_np

    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    warm = x * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    for batch in (x, warm):
        ours = photometric_np(batch.numpy().copy(), mode)
        assert np.abs(photometric(batch.clone(), mode).numpy() - ours).max() < 1e-5
    if mode == "autolevel":  # a colour cast (per-channel gain) is undone
        assert np.abs(photometric_np(x.numpy().copy(), mode) - photometric_np(warm.numpy().copy(), mode)).max() < 1e-5


def test_equalize_spreads_a_dim_image_over_the_range_and_keeps_its_hue() -> None:
    """input_norm `equalize`: a dim, flat, tinted image comes out with luminance spread evenly over [0, 1]
    (the histogram equalised), and each pixel's R:G:B ratios as they were (one gain per pixel)."""
    from tlpipe.data.images import LUMA
    from tlpipe.inference import photometric

    base = 0.1 + 0.25 * torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    dim = base * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    out = photometric(dim.clone(), "equalize")
    luma = sum(out[:, c] * w for c, w in enumerate(LUMA)).flatten(1)
    assert luma.min() < 0.01 and luma.max() > 0.9  # the darkest pixel to black, the brightest near white
    assert (luma.median(1).values - 0.5).abs().max() < 0.05  # half the pixels below mid-grey, as a flat histogram
    unclipped = out[:, 0] < 1.0
    assert unclipped.float().mean() > 0.75  # red, the strongest channel, saturates in the brightest pixels
    for c, tint in ((1, 0.8), (2, 0.6)):
        assert torch.allclose((out[:, c] / out[:, 0].clamp_min(1e-6))[unclipped & (out[:, 0] > 0.02)],
                              torch.tensor(tint), atol=1e-4)
