"""Benchmark: inference of PyTorch eager against its ONNX export in onnxruntime, fp32 and static int8.

Images/s at --batch over --images images, and batch-1 latency (median and p90 of --latency-runs single-image
passes), side by side in one run, on the same normalised inputs and the same number of threads. The model is
--model (a checkpoint) or, by default, params.yaml's backbone with ImageNet weights and a fresh 7-class head,
at model.input_size. The int8 model is calibrated on --calibration images (the checkpoint's split is not
needed: calibration data only moves accuracy, not speed). PyTorch runs as the pipeline does (eval, no_grad,
channels_last); onnxruntime on the CPU execution provider.

    python bench/export.py [--model models/retrained.pt] [--images 512] [--batch 64] [--latency-runs 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from tlpipe import checkpoint, export, models  # noqa: E402
from tlpipe.config.params import load as load_params  # noqa: E402
from tlpipe.inference_onnx import INPUT, OnnxClassifier, normalize  # noqa: E402


def model(args: argparse.Namespace) -> tuple[models.Net, dict]:
    if args.model:
        return checkpoint.restore(args.model)
    params = load_params(ROOT / "params.yaml")
    bb, size = params["model"]["backbone"], params["model"]["input_size"]
    spec = models.spec(bb)
    meta = {"backbone": bb, "classes": [f"c{i}" for i in range(7)], "input_size": size, "mean": list(spec.mean),
            "std": list(spec.std), "temperature": 1.0}
    return models.build(bb, 7, pretrained=params["model"]["weights"] == "imagenet"), meta


def timed(fn, x: np.ndarray, batch: int, latency_runs: int) -> tuple[float, float, float]:
    """(images/s over x in batches, median and p90 batch-1 latency in ms)."""
    fn(x[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch])
    rate = len(x) / (time.perf_counter() - t0)
    fn(x[:1])
    lat = []
    for i in range(latency_runs):
        t = time.perf_counter()
        fn(x[i % len(x) : i % len(x) + 1])
        lat.append((time.perf_counter() - t) * 1000)
    return rate, float(np.median(lat)), float(np.percentile(lat, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a checkpoint (default: params.yaml's backbone, fresh head)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--calibration", type=int, default=export.CALIBRATION_IMAGES)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net, meta = model(args)
    size = int(meta["input_size"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, size, size), dtype=np.uint8)
    x = normalize(images, meta["mean"], meta["std"])
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
        export.to_onnx(net, meta, fp32)
        calib = rng.integers(0, 256, (args.calibration, 3, size, size), dtype=np.uint8)
        export.quantize_int8(fp32, int8, calib, meta)
        net = net.eval().to(memory_format=torch.channels_last)

        @torch.no_grad()
        def eager(b: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(b).contiguous(memory_format=torch.channels_last)).numpy()

        runs = {"PyTorch eager (fp32, channels_last)": eager}
        for name, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8 (static, QDQ)", int8)):
            sess = OnnxClassifier(path, threads=args.threads).session
            runs[name] = lambda b, s=sess: s.run(None, {INPUT: b})[0]
        sizes = {"PyTorch eager (fp32, channels_last)": None, "ONNX Runtime fp32": fp32.stat().st_size,
                 "ONNX Runtime int8 (static, QDQ)": int8.stat().st_size}
        print(f"{meta['backbone']} at {size} px, {args.images} images, batch {args.batch}, {args.threads} threads, "
              f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}\n")
        print("| runtime | images/s (batch %d) | batch-1 latency p50 ms | p90 ms | model file MB |" % args.batch)
        print("|---|---:|---:|---:|---:|")
        for name, fn in runs.items():
            rate, p50, p90 = timed(fn, x, args.batch, args.latency_runs)
            mb = f"{sizes[name] / 1e6:.1f}" if sizes[name] else "-"
            print(f"| {name} | {rate:.0f} | {p50:.2f} | {p90:.2f} | {mb} |")


if __name__ == "__main__":
    main()
