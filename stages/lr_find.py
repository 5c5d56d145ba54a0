"""Stage lr_find: which learning rate to pass to `dvc exp run -S train.lr=...`. Sweeps the rate for the head
(on cached features, from ImageNet weights) and for fine-tuning (on cached prefix activations, from
models/head.pt); the smoothed loss per rate in plots/lr_find_<phase>.csv (`dvc plots show`) and
plots/lr_find.png, the suggestions and the rule behind them in reports/lr_find.json (see tlpipe.training.lr_find)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.data.splitdir import SplitDir
from tlpipe.stage import entry
from tlpipe.training.lr_find import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--init", type=Path, default=Path("models/head.pt"), help="the fine-tuning sweep's start")
    ap.add_argument("--features", type=Path, default=Path("data/features"),
                    help="the audit stage's ImageNet features of the split (used when they match these params)")
    ap.add_argument("--out", type=Path, default=Path("reports/lr_find.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots"))
    args = ap.parse_args()
    run_stage(load_params(), SplitDir(args.split, args.raw, args.cache), args.init, args.out, args.plots,
              args.features)


if __name__ == "__main__":
    entry(main)
