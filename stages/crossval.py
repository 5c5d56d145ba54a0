"""Stage crossval: group k-fold over train + valid (split.folds > 0), each fold trained as train_head then
finetune, and with split.fold_retrain retrained as retrain with the unknown images of add_unknown_class's
split; per fold and mean/std/min/max to metrics/crossval.json. split.folds 0: writes {"folds": 0}."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.atomic import write_json
from tlpipe.config import params
from tlpipe.data.splitdir import SplitDir
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--features", type=Path, default=Path("data/features"),
                    help="the audit stage's ImageNet features of the split (used when they match these params)")
    ap.add_argument("--unknown-split", type=Path, default=Path("data/split_unknown"), help="split.fold_retrain")
    ap.add_argument("--unknown-cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--out", type=Path, default=Path("metrics/crossval.json"))
    args = ap.parse_args()
    p = params.load()
    if not p["split"]["folds"]:  # off: no torch, no MLflow run (the default run pays ~1 s)
        write_json(args.out, {"folds": 0})
        say(f"crossval: off (split.folds 0) -> {args.out}")
        return
    from tlpipe.training.crossval import describe, run_stage  # torch only when folds are on
    unknown = SplitDir(args.unknown_split, args.raw, args.unknown_cache) if p["split"]["fold_retrain"] else None
    res = run_stage(p, SplitDir(args.split, args.raw, args.cache), args.out, args.features, unknown)
    say(f"{describe(res)} -> {args.out}")


if __name__ == "__main__":
    entry(main)
