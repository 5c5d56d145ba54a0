"""Stage train_head: frozen ImageNet backbone, new linear head for the known classes, head trained alone."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import models
from tlpipe.config.params import load as load_params
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import SplitDir
from tlpipe.stage import entry
from tlpipe.training.stage import Outputs, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--features", type=Path, default=Path("data/features"),
                    help="the audit stage's ImageNet features of the split (used when they match these params)")
    ap.add_argument("--name", default="head", help="stem of models/<name>.pt, metrics/<name>.json, plots/<name>.*")
    args = ap.parse_args()
    params = load_params()
    model = params["model"]
    train("train_head", Outputs(args.name), params, SplitDir(args.split, args.raw, args.cache),
          [("head", Phase.from_params(params, "train_head"))],
          lambda classes: models.build(model["backbone"], len(classes), model["weights"] == "imagenet"),
          features=args.features)


if __name__ == "__main__":
    entry(main)
