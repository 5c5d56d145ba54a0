"""Stage retrain: the finetuned model with K+1 outputs (known + unknown): head first, then unfrozen blocks;
the best model is then logged to the run as a pyfunc model and registered (params: registry)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import checkpoint, models, params as P, serving, workflow
from tlpipe.stage import entry
from tlpipe.training import Phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--init", type=Path, default=Path("models/finetuned.pt"))
    args = ap.parse_args()
    p = P.load()

    def init(classes: list[str]) -> models.Net:
        net, meta = checkpoint.restore(args.init, p["model"]["backbone"])
        models.replace_head(net, len(classes), keep_rows=len(meta["classes"]))
        return net

    workflow.training_stage(
        "retrain", "retrained", p, args.split, args.cache, args.raw,
        [("head", Phase.from_params(p["retrain"]["head"])), ("finetune", Phase.from_params(p["retrain"]["finetune"]))],
        init)
    if p["registry"]["register"]:
        name, version = serving.register(Path("models/retrained.pt"), serving.example_image(args.split, args.raw),
                                         p["registry"]["model_name"], serving.last_run_id(), Path("."),
                                         p["tracking"]["connect_timeout"])
        print(f"retrain: registered models:/{name}/{version}")


if __name__ == "__main__":
    entry(main)
