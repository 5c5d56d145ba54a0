"""Stage robustness: closed-set test accuracy under seeded corruptions (white balance, hue, brightness,
contrast, over-exposure, blur, motion blur, noise, JPEG, down-scaling, rotation) at three severities
(see tlpipe.evaluation.robustness for each corruption, tlpipe.evaluation.robustness_stage for the outputs)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config import params
from tlpipe.data.splitdir import SplitDir
from tlpipe.evaluation.robustness_stage import run
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    run(args.model, SplitDir(args.split, args.raw, args.cache), args.name, params.load())


if __name__ == "__main__":
    entry(main)
