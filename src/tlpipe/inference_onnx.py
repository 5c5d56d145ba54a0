"""The inference path over an exported ONNX model (`tlpipe.export`), run by onnxruntime; imports no torch.

The model file is self-contained: its metadata_props carry the preprocessing (input_size, mean, std), the
class names, the temperature and the backbone. Images are decoded and resized exactly as
`inference.classify` does (data.images.decode), normalised in float32 as data.transforms.normalize,
and probabilities are softmax(logits / temperature), so a .onnx answers like the .pt it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .data.images import LUMA, decode
from .errors import PipelineError

FORMAT = "tlpipe-onnx-v1"  # metadata_props["format"] of an exported model
INPUT = "input"  # (batch, 3, input_size, input_size) float32, normalised
OUTPUT = "logits"  # (batch, classes) float32; probabilities = softmax(logits / temperature)


def parse_meta(props: dict[str, str], where: str) -> dict[str, Any]:
    """The checkpoint-style metadata (classes, input_size, mean, std, temperature, backbone) of an ONNX model's
    metadata_props; one error naming the file when they are missing or foreign."""
    if props.get("format") != FORMAT:
        raise PipelineError(f"onnx model {where}: not a tlpipe export (no metadata format {FORMAT!r})")
    try:
        return {"classes": list(json.loads(props["classes"])), "input_size": int(props["input_size"]),
                "mean": [float(v) for v in json.loads(props["mean"])],
                "std": [float(v) for v in json.loads(props["std"])],
                "temperature": float(props["temperature"]), "backbone": props["backbone"],
                "input_norm": props.get("input_norm", "none")}
    except (KeyError, ValueError, TypeError) as exc:
        raise PipelineError(f"onnx model {where}: bad tlpipe metadata ({exc!r})") from exc


def photometric(x: np.ndarray, mode: str) -> np.ndarray:
    """inference.photometric in NumPy: per-image `grayworld`, `autolevel` or `equalize` of float32 NCHW in [0, 1]."""
    if mode == "grayworld":
        means = np.maximum(x.mean((2, 3), keepdims=True), np.float32(1e-3))
        return np.clip(x * (means.mean(1, keepdims=True) / means), 0.0, 1.0).astype(np.float32)
    if mode == "autolevel":
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        lo, hi = np.quantile(flat, [0.01, 0.99], axis=2, keepdims=True).astype(np.float32)
        out = np.clip((flat - lo) / np.maximum(hi - lo, np.float32(1.0 / 255)), 0.0, 1.0)
        return out.reshape(x.shape).astype(np.float32)
    if mode == "equalize":
        luma = x[:, 0] * np.float32(LUMA[0]) + x[:, 1] * np.float32(LUMA[1]) + x[:, 2] * np.float32(LUMA[2])
        level = np.rint(luma.reshape(x.shape[0], -1) * np.float32(255.0)).astype(np.int64)
        cdf = np.stack([np.bincount(row, minlength=256) for row in level]).cumsum(1).astype(np.float64)
        darkest = np.take_along_axis(cdf, level.min(1, keepdims=True), 1)
        lut = ((cdf - darkest) / np.maximum(cdf[:, -1:] - darkest, 1.0)).astype(np.float32)
        gain = np.take_along_axis(lut, level, 1) / np.maximum(luma.reshape(x.shape[0], -1), np.float32(1.0 / 255))
        return np.clip(x * gain.reshape(x.shape[0], 1, *x.shape[2:]), 0.0, 1.0).astype(np.float32)
    return x


def normalize(images: np.ndarray, mean: list[float], std: list[float], input_norm: str = "none") -> np.ndarray:
    """uint8 NCHW -> float32 (photometric(x / 255) - mean) / std, as inference.prepare."""
    x = photometric(images.astype(np.float32) / np.float32(255.0), input_norm)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float32) / np.float32(temperature)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class OnnxClassifier:
    """An exported model in an onnxruntime session: uint8 images or encoded files in, probabilities out."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"onnx model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default (the physical cores)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise PipelineError(f"onnx model {path}: onnxruntime cannot load it ({str(exc)[:200]})") from exc
        self.meta = parse_meta(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.classes: list[str] = self.meta["classes"]

    def logits(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, classes) float32 logits of uint8 NCHW images."""
        if len(images) == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        outs = [self.session.run([OUTPUT], {INPUT: normalize(images[i : i + batch], self.meta["mean"],
                                                               self.meta["std"], self.meta["input_norm"])})[0]
                for i in range(0, len(images), batch)]
        return np.concatenate(outs)

    def probabilities(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, classes) float32 softmax(logits / T) of uint8 NCHW images."""
        return softmax(self.logits(images, batch), self.meta["temperature"])

    def classify(self, blobs: list[tuple[str, bytes]], batch: int = 64) -> np.ndarray:
        """Probabilities of encoded images (name, bytes), decoded and resized as inference.classify does."""
        size = self.meta["input_size"]
        images = np.stack([decode(data, name, size).transpose(2, 0, 1) for name, data in blobs])
        return self.probabilities(images, batch)
