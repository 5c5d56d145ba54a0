"""Stage finetune: from the head checkpoint, unfreeze the last blocks and train with a lower lr."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import checkpoint, params as P, tracking, workflow
from tlpipe.stage import entry
from tlpipe.training import Phase, set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--init", type=Path, default=Path("models/head.pt"))
    args = ap.parse_args()
    p = P.load()
    set_seed(p["seed"], p["device"])
    classes = workflow.read_classes(args.split)
    pp = workflow.preproc(p["model"], p["augment"], p["device"])
    with tracking.stage_run("finetune", p, p["tracking"]["experiment"]) as tr:
        net, _ = checkpoint.restore(args.init, p["model"]["backbone"])
        train = workflow.load_data(args.split, "train", args.raw, classes, pp.size, args.cache)
        valid = workflow.load_data(args.split, "valid", args.raw, classes, pp.size, args.cache)
        res, hist = workflow.run_phases(net, [("finetune", Phase.from_params(p["finetune"]))], train, valid, pp, tr)
        meta = workflow.meta_for(p["model"], classes, pp, {"stage": "finetune"})
        workflow.save_training(Path("models"), "finetuned", net, meta, res, hist, valid, pp, Path("metrics/finetune.json"),
                               Path("plots"), tr)
    print(f"finetune: best epoch {res.best_epoch}, val_acc {res.best_val_acc:.4f} -> models/finetuned.pt, "
          f"metrics/finetune.json, plots/finetuned.png")


if __name__ == "__main__":
    entry(main)
