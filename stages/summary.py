"""Stage summary (always runs, last, in about a second plus MLflow's import): the headline metrics of every
model and all params on the pipeline run's MLflow parent run (see tlpipe.summary). A fresh clone's
`dvc repro` skips the evaluate stages (their outputs are committed); this still fills the parent run."""

import argparse

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.stage import entry
from tlpipe.summary import named, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--training", nargs="+", type=named, required=True, metavar="MODEL=METRICS_JSON")
    ap.add_argument("--evaluate", nargs="+", type=named, required=True, metavar="MODEL=METRICS_JSON")
    args = ap.parse_args()
    summarize(dict(args.training), dict(args.evaluate), load_params())


if __name__ == "__main__":
    entry(main)
