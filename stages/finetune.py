"""Stage finetune: from the head checkpoint, unfreeze the last blocks and train with a lower lr."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import checkpoint
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
    ap.add_argument("--init", type=Path, default=Path("models/head.pt"))
    ap.add_argument("--name", default="finetuned", help="stem of models/<name>.pt, metrics/<name>.json, plots/<name>.*")
    args = ap.parse_args()
    params = load_params()
    train("finetune", Outputs(args.name), params, SplitDir(args.split, args.raw, args.cache),
          [("finetune", Phase.from_params(params, "finetune"))],
          lambda classes: checkpoint.restore(args.init, params["model"]["backbone"])[0])


if __name__ == "__main__":
    entry(main)
