"""Stage crossval: group k-fold over train + valid (split.folds > 0) trained as train_head, finetune (and retrain:
split.fold_retrain); metrics/crossval.json per fold and overall, each out-of-fold error to --errors."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.atomic import write_json
from tlpipe.config import params
from tlpipe.data.splitdir import SplitDir
from tlpipe.evaluation.out_of_fold import write_errors
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--features", type=Path, default=Path("data/features"), help="the audit stage's, when they match")
    ap.add_argument("--unknown-split", type=Path, default=Path("data/split_unknown"), help="split.fold_retrain")
    ap.add_argument("--unknown-cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--out", type=Path, default=Path("metrics/crossval.json"))
    ap.add_argument("--errors", type=Path, default=Path("reports/crossval_errors.csv"))
    args = ap.parse_args()
    p = params.load()
    if not p["split"]["folds"]:  # off: no torch, no MLflow run (the default run pays ~1 s)
        write_json(args.out, {"folds": 0})
        write_errors(args.errors, [])
        say(f"crossval: off (split.folds 0) -> {args.out}, {args.errors}")
        return
    from tlpipe.training.crossval import run_stage  # torch only when folds are on
    unknown = SplitDir(args.unknown_split, args.raw, args.unknown_cache) if p["split"]["fold_retrain"] else None
    run_stage(p, SplitDir(args.split, args.raw, args.cache), args.out, args.errors, args.features, unknown)


if __name__ == "__main__":
    entry(main)
