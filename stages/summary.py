"""Stage summary (last, about a second plus MLflow's import): the headline metrics of every model and all params
on the pipeline run's MLflow parent run (see tlpipe.summary), and in reports/summary.json. That file is a DVC
cache output, absent on a fresh clone: `dvc repro` there skips the evaluate stages (their outputs are
committed) but runs this one, so the parent run still gets both models' test metrics. metrics/summary.json is a
plain uncached output, which keeps DVC's run-cache from skipping this stage: a repeated experiment's new parent
run gets its metrics too."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.stage import entry
from tlpipe.summary import named, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--training", nargs="+", type=named, required=True, metavar="MODEL=METRICS_JSON")
    ap.add_argument("--evaluate", nargs="+", type=named, required=True, metavar="MODEL=METRICS_JSON")
    ap.add_argument("--out", type=Path, required=True, help="JSON of every number logged to the parent run")
    ap.add_argument("--metrics", type=Path, required=True, help="the short headline (DVC metrics file)")
    args = ap.parse_args()
    summarize(dict(args.training), dict(args.evaluate), load_params(), args.out, args.metrics)


if __name__ == "__main__":
    entry(main)
