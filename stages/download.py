"""Stage download: fetch or generate the dataset into data/raw/, check every image, write data/raw/index.csv.

Also data/raw/bad_images.csv (images dropped under data.bad_images: skip) and metrics/data.json
(images, classes, bad_images).
"""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import params as P
from tlpipe.atomic import atomic_dir, write_json
from tlpipe.data import checks, manifest, sources
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/data.json"))
    args = ap.parse_args()
    data = P.load()["data"]
    with atomic_dir(args.out) as tmp:
        rows = sources.build(tmp, data)
        rows = sources.limit_per_class(rows, data["max_per_class"])
        rows, bad = checks.scan(tmp, rows, data["bad_images"])
        labels = checks.require_classes(rows, sources.describe(data))
        fixed = any(r.get("split") for r in rows)
        manifest.write(tmp / "index.csv", rows, extra=("split",) if fixed else ())
        checks.write_bad(tmp / "bad_images.csv", bad)
    write_json(args.metrics, {"images": len(rows), "classes": len(labels), "bad_images": len(bad)})
    skipped = f", {len(bad)} bad image(s) skipped (listed in {args.out}/bad_images.csv)" if bad else ""
    print(f"download: {len(rows)} images of {len(labels)} classes{skipped} -> {args.out}/ (index {args.out}/index.csv)")


if __name__ == "__main__":
    entry(main)
