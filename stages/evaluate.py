"""Stage evaluate: closed-set metrics and reports, calibration, and open-set recognition on the test split
(see tlpipe.evaluation.stage for what each model is measured on)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import SplitDir
from tlpipe.evaluation.stage import Outputs, evaluate
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    evaluate(args.model, SplitDir(args.split, args.raw, args.cache), Outputs(args.name), load_params())


if __name__ == "__main__":
    entry(main)
