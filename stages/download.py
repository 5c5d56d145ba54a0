"""Stage download: fetch or generate the dataset into data/raw/, check every image, write data/raw/index.csv.

Also data/raw/bad_images.csv (images dropped under data.bad_images: skip) and metrics/data.json
(images, classes, bad_images)."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe.atomic import write_json
from tlpipe.config.params import load as load_params
from tlpipe.data import rawdir
from tlpipe.progress import say
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/data.json"))
    args = ap.parse_args()
    counts = rawdir.build(args.out, load_params()["data"])
    write_json(args.metrics, counts)
    skipped = f", {counts['bad_images']} bad image(s) skipped (listed in {args.out}/bad_images.csv)" \
        if counts["bad_images"] else ""
    say(f"download: {counts['images']} images of {counts['classes']} classes{skipped} -> {args.out}/ "
        f"(index {args.out}/index.csv)")


if __name__ == "__main__":
    entry(main)
