"""Stage audit: data quality of a split folder (data/split: the known classes) on frozen ImageNet features:
label issues (cleanlab on out-of-fold linear-head probabilities), near-duplicates across splits, per-class
outliers, class balance. Reports only (its findings stop nothing); train_head, lr_find and crossval reuse its
features (tlpipe.features)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.audit.stage import Outputs, run
from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import SplitDir
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    args = ap.parse_args()
    run(SplitDir(args.split, args.raw, args.cache), Outputs(features=args.features), load_params())


if __name__ == "__main__":
    entry(main)
