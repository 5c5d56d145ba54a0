"""Stage export: a trained checkpoint as models/<name>.onnx (self-contained: preprocessing and classes in its
metadata), checked against PyTorch on the validation split; with export.int8 also models/<name>.int8.onnx
(onnxruntime static quantization calibrated on training images). Parity in metrics/export_<name>.json."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import SplitDir
from tlpipe.export import export
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint, models/<name>.pt")
    ap.add_argument("--split", type=Path, required=True, help="split folder whose valid images check parity")
    ap.add_argument("--cache", type=Path, help="its decoded cache (default: decode now)")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--out", type=Path, required=True, help="the .onnx to write")
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args()
    result = export(args.model, SplitDir(args.split, args.raw, args.cache), args.out, args.metrics, load_params())
    fp32 = result["fp32"]
    say(f"export: max |Δp| {fp32['max_abs_prob_diff']:.2e}, top-1 agreement {fp32['top1_agreement']:.4f} "
        f"-> {args.out}, {args.metrics}")
    if "int8" in result:
        q = result["int8"]
        say(f"export: int8 accuracy {q['accuracy']:.4f} ({q['accuracy_change']:+.4f}), "
            f"top-1 agreement {q['top1_agreement']:.4f} -> {q['onnx']}")


if __name__ == "__main__":
    entry(main)
