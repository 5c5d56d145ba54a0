"""Choose a recipe on validation, never on test: train head + finetune in-process for each candidate, then
score the validation split (accuracy with a 95% group-bootstrap interval, the confusions) and the robustness
report on it (white balance, exposure, blur, noise ... at 3 severities).

    python bench/recipe.py --repo DIR [--candidate name:key=value,key=value ...] [--folds K]

DIR is a pipeline checkout whose split and decode stages have run (`dvc repro decode@split`); its
params.yaml is the base every candidate overrides (dotted keys, YAML values). With --folds K each candidate
is also cross-validated over the train + valid tracks exactly as the crossval stage does (`split.folds`:
nested group folds, epochs chosen on groups the fold is not scored on). Prints one table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tlpipe.data.splitdir import SplitDir  # noqa: E402
from tlpipe.evaluation import bootstrap, out_of_fold, robustness  # noqa: E402
from tlpipe.inference import predict_logits, preproc_from_params  # noqa: E402
from tlpipe.training import crossval  # noqa: E402


def override(params: dict, sets: list[str]) -> dict:
    out = yaml.safe_load(yaml.safe_dump(params))
    for kv in sets:
        key, value = kv.split("=", 1)
        node = out
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = yaml.safe_load(value)
    return out


def score(params: dict, split: SplitDir, classes: list[str], corrupt: bool = True) -> dict:
    prep = preproc_from_params(params["model"], "cpu")
    train_data, valid = split.data("train", classes, prep.size), split.data("valid", classes, prep.size)
    t0 = time.perf_counter()
    net, _, _ = crossval.train_fold(params, "valid", train_data, valid, classes, prep)  # train_head, then finetune
    seconds = time.perf_counter() - t0
    pred = predict_logits(net, valid.images, prep).argmax(1).numpy()
    target = valid.targets.numpy()
    groups = np.array([r["group"] for r in split.rows("valid")])
    lo_hi = bootstrap.group_bootstrap(groups, bootstrap.accuracy(pred == target), 1000, params["seed"])
    rob = robustness.report(net, valid.images, valid.targets, prep, params["seed"],
                            robustness.NAMES if corrupt else ())
    wrong = {(classes[t], classes[p]): int(((target == t) & (pred == p)).sum())
             for t in range(len(classes)) for p in range(len(classes)) if t != p}
    return {"acc": float((pred == target).mean()), "ci": lo_hi, "rob": rob, "seconds": seconds,
            "confusions": {f"{a}->{b}": n for (a, b), n in wrong.items() if n}}


def cross_validate(params: dict, split: SplitDir, classes: list[str], k: int) -> tuple[list[float], str]:
    """Accuracy of each of k nested group folds over the train + valid rows, as the crossval stage scores
    them (test never touched), and the stage's line on their out-of-fold errors (by confusion and group)."""
    params = {**params, "split": {**params["split"], "folds": k}}
    prep = preproc_from_params(params["model"], "cpu")
    res = crossval.cross_validate(params, crossval.folds_of(params, split),
                                  crossval.pooled(split, classes, prep.size), classes, prep)
    rows = crossval.pooled_rows(split)
    return ([f["accuracy"] for f in res.metrics["per_fold"].values()],
            out_of_fold.describe([(p, rows) for p in res.predictions]))


def mean_of(result: dict, corruption: str) -> float:
    """A corruption's accuracy over its 3 severities (nan when it was not run)."""
    return result["rob"]["corruptions"].get(corruption, {}).get("mean", float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--candidate", action="append", default=[], help="name:key=value,key=value")
    ap.add_argument("--folds", type=int, default=0, help="also cross-validate each candidate over k group folds")
    ap.add_argument("--no-base", action="store_true", help="skip the base params as a candidate")
    ap.add_argument("--no-robustness", action="store_true", help="skip the robustness report (faster)")
    args = ap.parse_args()
    base = yaml.safe_load((args.repo / "params.yaml").read_text())
    split = SplitDir(args.repo / "data/split", args.repo / "data/raw", args.repo / "data/cache/split")
    classes = split.classes()
    candidates = ([] if args.no_base else [("base", [])]) + [(c.split(":", 1)[0], c.split(":", 1)[1].split(",")) for c in args.candidate]
    rows = []
    for name, sets in candidates:
        params = override(base, sets)
        r = score(params, split, classes, not args.no_robustness)
        if args.folds:
            accs, errors = cross_validate(params, split, classes, args.folds)
            r["folds"] = accs
            print(f"{name}: {args.folds}-fold accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f} {accs}\n"
                  f"{name}: {errors}", flush=True)
        rows.append((name, sets, r))
        cols = ("white_balance", "hue", "brightness", "contrast", "overexposure", "warm_overexposure", "noise",
                "motion_blur")
        print(f"{name}: valid acc {r['acc']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}], robust mean "
              f"{r['rob']['mean']:.4f}, worst {r['rob']['worst']}, " +
              ", ".join(f"{c} {mean_of(r, c):.3f}" for c in cols) +
              f", {r['seconds']:.0f} s, wrong {r['confusions']}", flush=True)
    print("\n| candidate | overrides | valid accuracy [95% group CI] | corrupted mean | white balance | "
          "over-exposure | warm over-exposure | worst cell | fold accuracy mean ± sd | train s |\n"
          "|---|---|---|---:|---:|---:|---:|---|---|---:|")
    for name, sets, r in rows:
        w = r["rob"]["worst"]
        folds = f"{np.mean(r['folds']):.4f} ± {np.std(r['folds']):.4f}" if r.get("folds") else "-"
        cells = " | ".join(f"{mean_of(r, c):.4f}" for c in ("white_balance", "overexposure", "warm_overexposure"))
        print(f"| {name} | {' '.join(sets) or '(preset)'} | {r['acc']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
              + (f"{r['rob']['mean']:.4f} | {cells} | {w['corruption']} s{w['severity']} {w['accuracy']:.3f}"
                 if r["rob"]["corruptions"] else "- | - | - | - | -") + f" | {folds} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
