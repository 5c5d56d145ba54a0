"""Classify images with a pipeline checkpoint: top-k classes with temperature-scaled probabilities.

    tlpipe-predict path/to/img.png more/ [--model models/retrained.pt|.onnx] [--top-k 3] [--json] [--chart probs.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .errors import PipelineError
from .inference import classify
from .stage import entry

EXTENSIONS = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files inside them (sorted, recursive)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise PipelineError(f"predict: no such file or folder: {p}")
    if not out:
        raise PipelineError(f"predict: no images found in {', '.join(map(str, paths))}")
    return out


def probabilities(model: Path, files: list[Path], batch: int = 64) -> tuple[list[str], torch.Tensor]:
    """Class names and (N, classes) probabilities, softmax(logits / T) with the checkpoint's temperature;
    a .onnx model (tlpipe.export) runs in onnxruntime, with the preprocessing its metadata carries."""
    blobs = [(str(f), f.read_bytes()) for f in files]
    if Path(model).suffix == ".onnx":
        from .inference_onnx import OnnxClassifier

        onnx_model = OnnxClassifier(model)
        return onnx_model.classes, torch.from_numpy(onnx_model.classify(blobs, batch))
    net, meta = checkpoint.restore(model)
    return list(meta["classes"]), classify(net, meta, blobs, batch)


def top_k(classes: list[str], probs: torch.Tensor, files: list[Path], k: int) -> list[dict[str, Any]]:
    k = min(k, len(classes))
    vals, idx = probs.topk(k, 1)
    return [{"path": str(f), "top": [{"class": classes[int(i)], "probability": round(float(v), 6)}
                                     for v, i in zip(vs, ix)]} for f, vs, ix in zip(files, vals, idx)]


def chart(path: Path, classes: list[str], probs: torch.Tensor, files: list[Path]) -> None:
    """One horizontal bar chart of class probabilities per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    fig, axes = plt.subplots(len(files), 1, figsize=(6, 0.35 * len(classes) * len(files) + 1), dpi=110, squeeze=False)
    for ax, f, p in zip(axes[:, 0], files, probs):
        ax.barh(classes, p.numpy(), color="tab:blue")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f.name, fontsize=9)
        ax.set_xlabel("probability")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, help="image files or folders")
    ap.add_argument("--model", type=Path, default=Path("models/retrained.pt"),
                    help="a checkpoint (.pt), or its ONNX export (.onnx, run in onnxruntime)")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--chart", type=Path, help="write a bar chart of the class probabilities (PNG)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    args = ap.parse_args()
    files = expand(args.images)
    classes, probs = probabilities(args.model, files, args.batch_size)
    results = top_k(classes, probs, files, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    if args.chart:
        chart(args.chart, classes, probs, files)
        print(f"chart: {args.chart}")


def cli() -> None:
    """Console entry point: one-line errors, exit status 2."""
    entry(main)


if __name__ == "__main__":
    cli()
