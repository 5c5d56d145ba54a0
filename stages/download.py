"""Stage download: fetch or generate the dataset into data/raw/ and write data/raw/index.csv."""

import argparse
from pathlib import Path

import _path  # noqa: F401

from tlpipe import params as P
from tlpipe.atomic import atomic_dir
from tlpipe.data import manifest, sources
from tlpipe.stage import entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    args = ap.parse_args()
    data = P.load()["data"]
    with atomic_dir(args.out) as tmp:
        if data["dataset"] == "digits":
            rows = sources.digits(tmp)
        else:
            rows = sources.gtsrb(tmp, data["url"], data["sha256"])
        rows = sources.limit_per_class(rows, data["max_per_class"])
        manifest.write(tmp / "index.csv", rows)
    labels = sorted({r["label"] for r in rows}, key=lambda x: (len(x), x))
    print(f"download: {len(rows)} images of {len(labels)} classes -> {args.out}/ (index {args.out}/index.csv)")


if __name__ == "__main__":
    entry(main)
