"""Stage retrain: the finetuned model with K+1 outputs (known + unknown): head first, then unfrozen blocks;
the best model is then logged to the run as a pyfunc model and registered (params: registry)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.config.params import load as load_params
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import SplitDir
from tlpipe.progress import say
from tlpipe.stage import entry
from tlpipe.training.parallel import is_main
from tlpipe.training.stage import Outputs, extend_head, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--init", type=Path, default=Path("models/finetuned.pt"))
    ap.add_argument("--name", default="retrained", help="stem of models/<name>.pt, metrics/<name>.json, plots/<name>.*")
    args = ap.parse_args()
    params = load_params()
    split = SplitDir(args.split, args.raw, args.cache)
    train("retrain", Outputs(args.name), params, split,
          [(name, Phase.from_params(params, f"retrain.{name}")) for name in ("head", "finetune")],
          lambda classes: extend_head(args.init, params["model"]["backbone"], classes))
    if params["registry"]["register"] and is_main():  # under torchrun: rank 0 only
        from tlpipe.serving import registry  # mlflow's model code loads only when a model is registered

        name, version = registry.register_stage_model(Outputs(args.name).checkpoint(), split, params)
        say(f"retrain: registered models:/{name}/{version}")


if __name__ == "__main__":
    entry(main)
