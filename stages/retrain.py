"""Stage retrain: the finetuned model with K+1 outputs (known + unknown): head first, then unfrozen blocks."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import checkpoint, models, params as P, tracking, workflow
from tlpipe.stage import entry
from tlpipe.training import Phase, set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--init", type=Path, default=Path("models/finetuned.pt"))
    args = ap.parse_args()
    p = P.load()
    set_seed(p["seed"], p["device"])
    classes = workflow.read_classes(args.split)
    pp = workflow.preproc(p["model"], p["augment"], p["device"])
    with tracking.stage_run("retrain", p, p["tracking"]["experiment"]) as tr:
        net, meta0 = checkpoint.restore(args.init, p["model"]["backbone"])
        models.replace_head(net, len(classes), keep_rows=len(meta0["classes"]))
        train = workflow.load_data(args.split, "train", args.raw, classes, pp.size, args.cache)
        valid = workflow.load_data(args.split, "valid", args.raw, classes, pp.size, args.cache)
        phases = [("head", Phase.from_params(p["retrain"]["head"])),
                  ("finetune", Phase.from_params(p["retrain"]["finetune"]))]
        res, hist = workflow.run_phases(net, phases, train, valid, pp, tr)
        meta = workflow.meta_for(p["model"], classes, pp, {"stage": "retrain"})
        workflow.save_training(Path("models"), "retrained", net, meta, res, hist, valid, pp, Path("metrics/retrain.json"),
                               Path("plots"), tr)
    print(f"retrain: best epoch {res.best_epoch}, val_acc {res.best_val_acc:.4f} -> models/retrained.pt, "
          f"metrics/retrain.json, plots/retrained.png")


if __name__ == "__main__":
    entry(main)
