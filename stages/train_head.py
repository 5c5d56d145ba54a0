"""Stage train_head: frozen ImageNet backbone, new linear head for the known classes, head trained alone."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import models, params as P, workflow
from tlpipe.stage import entry
from tlpipe.training import Phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    p = P.load()
    workflow.training_stage(
        "train_head", "head", p, args.split, args.cache, args.raw, [("head", Phase.from_params(p["train_head"]))],
        lambda classes: models.build(p["model"]["backbone"], len(classes), p["model"]["weights"] == "imagenet"))


if __name__ == "__main__":
    entry(main)
