"""Stage split: stratified, seeded, group-aware train/valid/test manifests of the known classes.

Splits fixed by the data (index column `split`: a test list, train/ valid/ test/ folders, CIFAR-10's
test batch) are kept; the missing ones are carved out of train."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import make_split
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, default=Path("data/raw/index.csv"))
    ap.add_argument("--out", type=Path, default=Path("data/split"))
    args = ap.parse_args()
    report = make_split(args.index, args.out, load_params())
    say(f"split: {report['images']} images, {report['groups']} groups, leak-free -> {args.out}/")


if __name__ == "__main__":
    entry(main)
