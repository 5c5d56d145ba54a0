"""Stage evaluate: test-split metrics, classification report, confusion matrix (CSV for DVC + PNG)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import checkpoint, evaluation, params as P, tracking, workflow
from tlpipe.atomic import write_json, write_text
from tlpipe.errors import PipelineError
from tlpipe.stage import entry
from tlpipe.training import predict_logits, resolve_device, set_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    p = P.load()
    set_seed(p["seed"])
    classes = workflow.read_classes(args.split)
    with tracking.stage_run(f"evaluate_{args.name}", p, p["tracking"]["experiment"]) as tr:
        net, meta = checkpoint.restore(args.model)
        if meta["classes"] != classes:
            raise PipelineError(f"checkpoint {args.model}: classes {meta['classes']} differ from {args.split}")
        pp = workflow.preproc({"backbone": meta["backbone"], "input_size": meta["input_size"],
                               "channels_last": False}, {}, p["device"])
        test = workflow.load_data(args.split / "test.csv", args.raw, classes, pp.size)
        net.to(resolve_device(p["device"]))
        logits = predict_logits(net, test.images, pp, p["evaluate"]["batch_size"])
        metrics = evaluation.compute(test.targets, logits, classes)
        reports = Path("reports") / args.name
        write_text(reports / "classification_report.txt", evaluation.report_text(test.targets, logits, classes))
        write_json(reports / "classification_report.json", evaluation.report_dict(test.targets, logits, classes))
        evaluation.write_confusion_csv(Path("plots") / f"confusion_{args.name}.csv", test.targets, logits, classes)
        evaluation.confusion_png(Path("plots") / f"confusion_{args.name}.png", test.targets, logits, classes,
                                 f"{args.name} model on the test split (n={len(test.targets)})")
        metrics_path = Path("metrics") / f"evaluate_{args.name}.json"
        write_json(metrics_path, metrics)
        tr.metrics({k: v for k, v in metrics.items() if k != "per_class"}, prefix="test_")
        tr.metrics(metrics["per_class"], prefix="test_")
        for f in (metrics_path, reports / "classification_report.txt", reports / "classification_report.json",
                  Path("plots") / f"confusion_{args.name}.png"):
            tr.artifact(f)
    print(f"evaluate {args.name}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
          f"-> {metrics_path}, {reports}/, plots/confusion_{args.name}.png")


if __name__ == "__main__":
    entry(main)
