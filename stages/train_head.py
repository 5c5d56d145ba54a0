"""Stage train_head: frozen ImageNet backbone, new linear head for the known classes, head trained alone."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import models, params as P, tracking, workflow
from tlpipe.stage import entry
from tlpipe.training import Phase, set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    p = P.load()
    set_seed(p["seed"], p["device"])
    classes = workflow.read_classes(args.split)
    pp = workflow.preproc(p["model"], p["augment"], p["device"])
    with tracking.stage_run("train_head", p, p["tracking"]["experiment"]) as tr:
        train = workflow.load_data(args.split, "train", args.raw, classes, pp.size, args.cache)
        valid = workflow.load_data(args.split, "valid", args.raw, classes, pp.size, args.cache)
        net = models.build(p["model"]["backbone"], len(classes), p["model"]["weights"] == "imagenet")
        res, hist = workflow.run_phases(net, [("head", Phase.from_params(p["train_head"]))], train, valid, pp, tr)
        meta = workflow.meta_for(p["model"], classes, pp, {"stage": "train_head"})
        workflow.save_training(Path("models"), "head", net, meta, res, hist, valid, pp, Path("metrics/train_head.json"),
                               Path("plots"), tr)
    print(f"train_head: best epoch {res.best_epoch}, val_acc {res.best_val_acc:.4f} -> models/head.pt, "
          f"metrics/train_head.json, plots/head.png")


if __name__ == "__main__":
    entry(main)
