"""Probe a GTSRB checkpoint for issue 11's failure: no-entry signs read as stop under a warm, over-exposed light.

Scores the known-class images of a checkout's held-out splits (data/split/<split>.csv; read straight from the
archive in data/raw, at their stored size) under a grid of warm casts (red x 1 + w, blue x 1 - w) times gains
(clipped), and counts no_entry->stop and stop->no_entry. It needs nothing of the pipeline but the
checkpoint's own `classify`, so it runs a checkout of any commit with that commit's code (run it with
PYTHONPATH=<checkout>/src) and compares recipes from before and after the robustness report had
`warm_overexposure`.

    PYTHONPATH=<checkout>/src python bench/lighting.py <checkout> <checkout>/models/finetuned.pt [valid,test]
"""

from __future__ import annotations

import argparse
import csv
import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from tlpipe import checkpoint

try:  # the inference path moved into tlpipe.inference in the redesign
    from tlpipe.inference import classify
except ImportError:
    from tlpipe.predict import classify

WARM = (0.0, 0.15, 0.3, 0.45)
GAIN = (1.0, 1.5, 2.0, 2.5)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkout", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("splits", nargs="?", default="valid,test", help="comma-separated held-out splits")
    args = ap.parse_args()
    net, meta = checkpoint.restore(args.model)
    classes = list(meta["classes"])
    rows = []
    for split in args.splits.split(","):
        with open(args.checkout / "data/split" / f"{split}.csv", newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["label"] in classes]
    archives: dict[str, zipfile.ZipFile] = {}
    images = []
    for r in rows:
        name, member = r["path"].split("::", 1)
        zf = archives.setdefault(name, zipfile.ZipFile(args.checkout / "data/raw" / name))
        images.append(np.asarray(Image.open(io.BytesIO(zf.read(member))).convert("RGB"), dtype=np.float32) / 255)
    labels = np.array([r["label"] for r in rows])
    print(f"{args.model} on {args.splits} of {args.checkout}: {len(rows)} images, "
          f"{len({r['group'] for r in rows})} tracks, {dict(Counter(labels.tolist()))}")
    print(f"{'warm':>5} {'gain':>5} {'accuracy':>9} {'no_entry->stop':>15} {'stop->no_entry':>15}")
    for w in WARM:
        for gain in GAIN:
            g = np.array([1 + w, 1.0, 1 - w], np.float32) * gain
            probs = classify(net, meta, [(f"{i}.png", png(a * g)) for i, a in enumerate(images)], batch=256)
            pred = np.array(classes)[probs.argmax(1).numpy()]
            ne, st = labels == "no_entry", labels == "stop"
            print(f"{w:5.2f} {gain:5.1f} {np.mean(pred == labels):9.4f} "
                  f"{int((pred[ne] == 'stop').sum()):8d} of {int(ne.sum()):<4d} "
                  f"{int((pred[st] == 'no_entry').sum()):8d} of {int(st.sum())}", flush=True)


if __name__ == "__main__":
    main()
