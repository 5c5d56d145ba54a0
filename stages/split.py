"""Stage split: stratified, seeded, group-aware train/valid/test manifests of the known classes.

Splits fixed by the data (index column `split`: a test list, train/ valid/ test/ folders, CIFAR-10's
test batch) are kept; the missing ones are carved out of train.
"""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import params as P
from tlpipe.atomic import atomic_dir, write_json
from tlpipe.data import manifest
from tlpipe.errors import PipelineError
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, default=Path("data/raw/index.csv"))
    ap.add_argument("--out", type=Path, default=Path("data/split"))
    args = ap.parse_args()
    p = P.load()
    rows = manifest.read(args.index)
    present = {r["label"] for r in rows}
    known = P.known_classes(p, present)
    missing = [f"{k} ({v})" for k, v in known.items() if k not in present]
    if missing:
        raise PipelineError(f"params: data.known_classes {', '.join(missing)} have no images in {args.index}")
    rows = [{**r, "label": known[r["label"]], "origin": r["label"]} for r in rows if r["label"] in known]
    fractions = {s: float(p["split"][s]) for s in manifest.SPLITS}
    per_class = {s: int(p["split"][f"{s}_per_class"]) for s in ("valid", "test")}
    splits = manifest.split(rows, fractions, p["seed"], p["split"]["by_group"], per_class)
    report = manifest.leakage_report(splits)
    fixed = sorted(manifest.fixed_splits(rows))
    if fixed:
        report["fixed_by_data"] = fixed  # splits taken from the data itself, not drawn
    if not report["leak_free"]:
        raise PipelineError(f"split: groups shared between splits: {report['shared_groups']}")
    with atomic_dir(args.out) as tmp:
        for s, part in splits.items():
            manifest.write(tmp / f"{s}.csv", part, extra=("origin",))
        write_json(tmp / "classes.json", {"classes": list(known.values()), "ids": list(known.keys())})
        write_json(tmp / "split_report.json", report)
    print(f"split: {report['images']} images, {report['groups']} groups, leak-free -> {args.out}/")


if __name__ == "__main__":
    entry(main)
