"""Stage model_card: reports/model_card.md of the registered model from the run's own outputs (data and its
checksum, split sizes and groups, changed params, metrics with intervals, open set, calibration, robustness,
limitations, how to serve), logged to MLflow and set as the registered version's description."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.serving.card import run
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="retrained", help="the registered model's stage name")
    ap.add_argument("--out", type=Path, default=Path("reports/model_card.md"))
    args = ap.parse_args()
    run(load_params(), args.out, args.name)


if __name__ == "__main__":
    entry(main)
