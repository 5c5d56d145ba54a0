"""Stage decode: decode every image of a split folder once, at the model's input size, into uint8 .npy files."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data import cache
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    size = load_params()["model"]["input_size"]
    counts = cache.build(args.split, args.raw, args.out, size)
    say(f"decode: {counts} images of {args.split} at {size}px -> {args.out}/")


if __name__ == "__main__":
    entry(main)
