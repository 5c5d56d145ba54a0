"""Stage evaluate: closed-set metrics and reports, calibration, and open-set recognition on the test split.

The test split of data/split_unknown holds the known classes' test images, unknown images of the
classes retrain saw, and images of held-out classes nobody trained on. A model without an
`unknown` class is measured on the known images (closed set) and rejects by a score threshold
chosen on validation; a model with one is measured on known + seen-unknown images and rejects by
predicting `unknown`. Both are scored on known-vs-unknown separation in one table.
"""

import argparse
from pathlib import Path

import torch

import _path  # noqa: F401

from tlpipe import calibration, checkpoint, evaluation, openset, params as P, tracking, workflow
from tlpipe.atomic import atomic_dir, write_json, write_text
from tlpipe.data import manifest
from tlpipe.stage import entry
from tlpipe.training import set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"))
    ap.add_argument("--cache", type=Path, default=Path("data/cache/split_unknown"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    p = P.load()
    set_seed(p["seed"], p["device"])
    info = workflow.read_split_info(args.split)
    with tracking.stage_run(f"evaluate_{args.name}", p, p["tracking"]["experiment"]) as tr:
        net, meta = checkpoint.restore(args.model)
        classes, t = meta["classes"], float(meta.get("temperature", 1.0))
        pp = workflow.preproc_from_meta(meta, p["device"], p["model"]["channels_last"], p["evaluate"]["batch_size"])
        net.to(pp.device)
        holdout = set(info.get("holdout_ids", []))
        score = lambda split: workflow.score_split(net, args.split, split, args.raw, args.cache,  # noqa: E731
                                                   classes, holdout, pp)
        test, valid = score("test"), score("valid")
        keep = workflow.closed_set(test, classes)
        logits, target = test.logits[keep], test.target[keep]
        metrics = evaluation.compute(target, logits, classes)
        metrics["calibration"] = {
            "temperature": round(t, 6),
            "ece": round(calibration.ece(logits.softmax(1), target), 6),
            "ece_scaled": round(calibration.ece((logits / t).softmax(1), target), 6),
        }
        metrics["open_set"] = workflow.open_set_report(test, valid, classes, t)
        reports, plots = Path("reports") / args.name, Path("plots")
        with atomic_dir(reports) as tmp:  # the folder is one DVC output: complete or absent
            write_text(tmp / "classification_report.txt", evaluation.report_text(target, logits, classes))
            write_json(tmp / "classification_report.json", evaluation.report_dict(target, logits, classes))
        evaluation.write_confusion_csv(plots / f"confusion_{args.name}.csv", target, logits, classes)
        evaluation.write_per_class_csv(plots / f"per_class_{args.name}.csv", metrics["per_class"])
        evaluation.confusion_png(plots / f"confusion_{args.name}.png", target, logits, classes,
                                 f"{args.name} model, test split (n={len(target)})")
        images = workflow.split_images(args.split, "test", args.raw, pp.size, args.cache)[torch.from_numpy(keep)]
        evaluation.misclassified_png(plots / f"misclassified_{args.name}.png", images, target, logits, classes,
                                     f"{args.name} model, misclassified test images", p["evaluate"]["gallery_images"])
        calibration.reliability_png(plots / f"reliability_{args.name}.png", logits, target, t,
                                    f"{args.name} model: reliability on test")
        primary = metrics["open_set"]["primary_score"]
        unk = classes.index(manifest.UNKNOWN) if manifest.UNKNOWN in classes else None
        evaluation.write_roc_csv(plots / f"roc_{args.name}.csv", test.kind == "known",
                                 openset.scores(test.logits, t, unk)[primary].numpy())
        metrics_path = Path("metrics") / f"evaluate_{args.name}.json"
        write_json(metrics_path, metrics)
        tr.metrics({k: v for k, v in metrics.items() if k != "per_class"}, prefix="test_")
        tr.metrics(metrics["per_class"], prefix="test_")
        for f in (metrics_path, reports / "classification_report.txt", reports / "classification_report.json",
                  plots / f"confusion_{args.name}.png", plots / f"reliability_{args.name}.png",
                  plots / f"misclassified_{args.name}.png"):
            tr.artifact(f)
    os_ = metrics["open_set"]
    print(f"evaluate {args.name}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
          f"ECE {metrics['calibration']['ece']:.4f} -> {metrics['calibration']['ece_scaled']:.4f} (T={t:.2f}), "
          f"{primary} AUROC {os_['scores'][primary]['auroc']}, unseen-unknown recall "
          f"{(os_.get('unseen') or {}).get('unknown_recall')} -> {metrics_path}, {reports}/, plots/")


if __name__ == "__main__":
    entry(main)
