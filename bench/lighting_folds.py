"""Issue 11's light on the nested group folds: each fold's known-class model (train_head, then finetune, as the
crossval stage trains it) scores its held-out tracks clean and under warm casts x gains (clipped), counting
no_entry->stop and stop->no_entry over all folds. bench/lighting.py does the same for one checkpoint on the
held-out splits; this covers every train + valid track, so it can choose between recipes.

    python bench/lighting_folds.py --repo DIR [--folds 5] [key=value ...]

DIR is a GTSRB pipeline checkout whose split and decode stages have run; key=value override its params.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from recipe import override  # noqa: E402  (bench/ is the script's folder)
from tlpipe.data.splitdir import SplitDir  # noqa: E402
from tlpipe.inference import predict_logits, preproc_from_params  # noqa: E402
from tlpipe.training import crossval  # noqa: E402

CELLS = ((0.0, 1.0), (0.0, 2.0), (0.3, 2.0), (0.0, 2.5), (0.3, 2.5))  # (warm w, gain): red x 1 + w, blue x 1 - w


def light(x: torch.Tensor, warm: float, gain: float) -> torch.Tensor:
    g = torch.tensor([1 + warm, 1.0, 1 - warm]).view(1, 3, 1, 1) * gain
    return (x.float() * g).round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("sets", nargs="*", help="params overrides, key=value")
    args = ap.parse_args()
    params = override(yaml.safe_load((args.repo / "params.yaml").read_text()), args.sets)
    params["split"]["folds"] = args.folds
    split = SplitDir(args.repo / "data/split", args.repo / "data/raw", args.repo / "data/cache/split")
    classes = split.classes()
    prep = preproc_from_params(params["model"], "cpu")
    data = crossval.pooled(split, classes, prep.size)
    ne, st = classes.index("no_entry"), classes.index("stop")
    total = {c: [0, 0, 0] for c in CELLS}  # right, no_entry->stop, stop->no_entry
    for i, (tr, va, held) in enumerate(crossval.folds_of(params, split)):
        net, _, _ = crossval.train_fold(params, f"fold {i}", crossval.subset(data, tr), crossval.subset(data, va),
                                        classes, prep)
        h = crossval.subset(data, held)
        for c in CELLS:
            p, t = predict_logits(net, light(h.images, *c), prep).argmax(1), h.targets
            n = [int((p == t).sum()), int(((t == ne) & (p == st)).sum()), int(((t == st) & (p == ne)).sum())]
            total[c] = [a + b for a, b in zip(total[c], n)]
    n, n_ne, n_st = len(data.targets), int((data.targets == ne).sum()), int((data.targets == st).sum())
    print(f"{' '.join(args.sets) or 'params.yaml'}: {args.folds} folds, {n} images ({n_ne} no_entry, {n_st} stop)")
    print(f"{'warm':>5} {'gain':>5} {'accuracy':>9} {'no_entry->stop':>15} {'stop->no_entry':>15}")
    for (w, gain), (right, ne_st, st_ne) in total.items():
        print(f"{w:5.2f} {gain:5.1f} {right / n:9.4f} {ne_st:15d} {st_ne:15d}")


if __name__ == "__main__":
    main()
