"""Stage add_unknown_class: whole groups of classes outside the task become `unknown`; known rows keep their split.

Classes in unknown.holdout_classes are never trained or validated on: they only appear in test,
to measure how the model treats unknown kinds of images it has never seen. With `unknown.classes: []`
there is no `unknown` class: retrain keeps the known classes and continues training."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import add_unknown
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, default=Path("data/raw/index.csv"))
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--out", type=Path, default=Path("data/split_unknown"))
    args = ap.parse_args()
    done = add_unknown(args.index, args.split, args.out, load_params())
    say(f"add_unknown_class: unknown images per split {done['unknown_images']} (seen classes {done['seen']}, "
        f"held-out {done['held']}) -> {args.out}/")


if __name__ == "__main__":
    entry(main)
