"""Stage add_unknown_class: whole groups of classes outside the task become `unknown`; known rows keep their split.

Classes in unknown.holdout_classes are never trained or validated on: they only appear in test,
to measure how the model treats unknown kinds of images it has never seen.

With `unknown.classes: []` (a dataset with no classes to spare, e.g. CIFAR-10's ten) there is no
`unknown` class: retrain keeps the known classes and continues training, and held-out classes, if
any, still measure threshold rejection.
"""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import params as P
from tlpipe.atomic import atomic_dir, write_json
from tlpipe.data import manifest
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, default=Path("data/raw/index.csv"))
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--out", type=Path, default=Path("data/split_unknown"))
    args = ap.parse_args()
    p = P.load()
    u = p["unknown"]
    rows = manifest.read(args.index)
    known = P.known_classes(p, {r["label"] for r in rows})
    seen, held = manifest.unknown_ids({r["label"] for r in rows}, set(known), u["classes"], u["holdout_classes"])
    known_splits = {s: manifest.read(args.split / f"{s}.csv") for s in manifest.SPLITS}
    merged = manifest.with_unknown(
        known_splits, [r for r in rows if r["label"] in set(seen)], [r for r in rows if r["label"] in set(held)],
        {s: u[f"{s}_images"] for s in manifest.SPLITS}, u["holdout_test_images"], p["seed"])
    report = manifest.leakage_report(merged)
    with atomic_dir(args.out) as tmp:
        for s in manifest.SPLITS:
            manifest.write(tmp / f"{s}.csv", merged[s], extra=("origin",))
        extra = [manifest.UNKNOWN] if seen else []
        write_json(tmp / "classes.json", {"classes": [*known.values(), *extra], "ids": [*known.keys(), *extra],
                                          "unknown_ids": seen, "holdout_ids": held})
        write_json(tmp / "split_report.json", report)
    counts = {s: sum(r["label"] == manifest.UNKNOWN for r in merged[s]) for s in manifest.SPLITS}
    print(f"add_unknown_class: unknown images per split {counts} (seen classes {seen}, held-out {held}) -> {args.out}/")


if __name__ == "__main__":
    entry(main)
