"""The export stage: a checkpoint as a self-contained ONNX model (torch.onnx), checked against PyTorch on the
validation split, optionally also an onnxruntime static-quantized int8 model calibrated on training images.

The only module that imports torch.onnx or onnxruntime.quantization. The .onnx takes normalised float32
NCHW images of the checkpoint's input size (any batch) and gives logits; its metadata_props carry what a
consumer needs besides (inference_onnx.parse_meta): input_size, mean, std, classes (JSON), temperature,
backbone. `tlpipe-predict --model models/<name>.onnx` and the served model (registry.backend: onnx) run it."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, models
from .atomic import atomic_path, write_json
from .errors import PipelineError
from .inference import predict_logits, preproc_from_meta
from .inference_onnx import FORMAT, INPUT, OUTPUT, OnnxClassifier

TOLERANCE = 1e-4  # max |probability difference| allowed between the fp32 ONNX model and PyTorch
CALIBRATION_IMAGES = 300  # training images the int8 model's activation ranges are calibrated on


def metadata(meta: dict[str, Any]) -> dict[str, str]:
    """metadata_props of an exported model (inference_onnx.parse_meta reads them back)."""
    return {"format": FORMAT, "input_size": str(int(meta["input_size"])), "mean": json.dumps(list(meta["mean"])),
            "std": json.dumps(list(meta["std"])), "classes": json.dumps(list(meta["classes"])),
            "temperature": repr(float(meta.get("temperature", 1.0))), "backbone": str(meta["backbone"]),
            "input_norm": str(meta.get("input_norm", "none")),
            "input": f"{INPUT}: float32 (batch, 3, {int(meta['input_size'])}, {int(meta['input_size'])}), "
                     "RGB resized bilinear, (photometric(x / 255, input_norm) - mean) / std",
            "output": f"{OUTPUT}: float32 (batch, classes); probabilities = softmax({OUTPUT} / temperature)"}


def to_onnx(net: models.Net, meta: dict[str, Any], path: Path) -> None:
    """Write `net` (eval mode, CPU) as a single-file ONNX model with a dynamic batch axis and the metadata."""
    import onnx

    net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    size = int(meta["input_size"])
    example = torch.zeros(2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():  # the TorchScript exporter: ~10x faster here than dynamo=True
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
                                  opset_version=17)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            raise PipelineError(f"export: torch.onnx cannot export {meta['backbone']} ({str(exc)[:300]})") from exc
        model = onnx.load(str(raw))
    onnx.helper.set_model_props(model, metadata(meta))
    with atomic_path(path) as tmp_path:
        onnx.save(model, str(tmp_path))


def torch_probabilities(net: models.Net, meta: dict[str, Any], images: torch.Tensor) -> np.ndarray:
    """The PyTorch reference: softmax(logits / T) of uint8 NCHW images, as inference.classify computes it."""
    logits = predict_logits(net, images, preproc_from_meta(meta, "cpu", channels_last=True, batch=64))
    return torch.softmax(logits / float(meta.get("temperature", 1.0)), 1).numpy()


def compare(reference: np.ndarray, probs: np.ndarray, targets: np.ndarray | None = None) -> dict[str, Any]:
    """Max |Δ probability|, top-1 agreement (and accuracies when targets are given) of `probs` vs `reference`."""
    out: dict[str, Any] = {"images": int(len(reference)),
                           "max_abs_prob_diff": float(np.abs(reference - probs).max()) if len(reference) else 0.0,
                           "top1_agreement": float((reference.argmax(1) == probs.argmax(1)).mean())
                           if len(reference) else 1.0}
    if targets is not None and len(reference):
        out["accuracy_pytorch"] = float((reference.argmax(1) == targets).mean())
        out["accuracy"] = float((probs.argmax(1) == targets).mean())
        out["accuracy_change"] = out["accuracy"] - out["accuracy_pytorch"]
    return out


def check_parity(reference: np.ndarray, probs: np.ndarray, where: str, tol: float = TOLERANCE) -> dict[str, Any]:
    """compare(), and one PipelineError when the ONNX model's probabilities differ by more than `tol` or its
    top-1 class differs where PyTorch's margin between the two classes is wider than 2 x tol."""
    result = compare(reference, probs)
    rows = np.arange(len(reference))
    flipped = (reference.argmax(1) != probs.argmax(1)) & (
        reference[rows, reference.argmax(1)] - reference[rows, probs.argmax(1)] > 2 * tol)
    if result["max_abs_prob_diff"] > tol or flipped.any():
        raise PipelineError(f"export: {where} does not match PyTorch on {len(reference)} validation images: "
                            f"max |Δ probability| {result['max_abs_prob_diff']:.2e} (allowed {tol:.0e}), "
                            f"top-1 agreement {result['top1_agreement']:.4f}")
    return result


class _Calibration:
    """onnxruntime CalibrationDataReader over normalised uint8 NCHW images, a batch at a time."""

    def __init__(self, images: np.ndarray, meta: dict[str, Any], batch: int = 32):
        from .inference_onnx import normalize

        self._batches = iter([normalize(images[i : i + batch], meta["mean"], meta["std"], meta.get("input_norm", "none"))
                              for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {INPUT: x}


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, meta: dict[str, Any]) -> None:
    """onnxruntime static quantization (QDQ, int8 per-channel weights, uint8 activations, MinMax ranges over
    `calibration`, uint8 NCHW images) of the fp32 model; the metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration, meta)
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(q))
    onnx.helper.set_model_props(model, metadata(meta))
    with atomic_path(out) as tmp_path:
        onnx.save(model, str(tmp_path))


def calibration_images(split: Any, size: int, seed: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """A seeded random sample of up to n training images of `split` (a SplitDir), uint8 NCHW."""
    from .data import cache

    arr = cache.load(split.path, "train", split.raw, size, split.cache)
    pick = np.sort(np.random.default_rng(seed).permutation(len(arr))[:n])
    return np.ascontiguousarray(np.asarray(arr[pick]).transpose(0, 3, 1, 2))


def int8_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".int8.onnx")


def export(ckpt: Path, split: Any, out: Path, metrics: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The export stage: models/<name>.onnx with its parity vs PyTorch on `split`'s (a SplitDir) validation
    images; with export.int8 also <name>.int8.onnx and its accuracy change. Writes and returns the metrics."""
    net, meta = checkpoint.restore(ckpt)
    data = split.data("valid", list(meta["classes"]), int(meta["input_size"]))
    reference = torch_probabilities(net, meta, data.images)
    to_onnx(net, meta, out)
    result = {"model": str(ckpt), "onnx": str(out), "tolerance": TOLERANCE,
              "fp32": check_parity(reference, OnnxClassifier(out).probabilities(data.images.numpy()), str(out))}
    q = int8_path(out)
    if params["export"]["int8"]:
        quantize_int8(out, q, calibration_images(split, int(meta["input_size"]), int(params["seed"])), meta)
        probs = OnnxClassifier(q).probabilities(data.images.numpy())
        result["int8"] = {"onnx": str(q), **compare(reference, probs, data.targets.numpy())}
    elif q.exists():
        os.remove(q)  # a stale int8 model of an earlier run with export.int8: true
    write_json(metrics, result)
    return result
