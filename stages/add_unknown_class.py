"""Stage add_unknown_class: whole groups of classes outside the task become `unknown`; known rows keep their split."""

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
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--out", type=Path, default=Path("data/split_unknown"))
    args = ap.parse_args()
    p = P.load()
    known = P.known_classes(p["data"])
    u = p["unknown"]
    rows = manifest.read(args.index)
    if u["classes"] == "rest":
        pool_ids = sorted({r["label"] for r in rows} - set(known))
    else:
        pool_ids = [str(c) for c in u["classes"]]
        bad = [c for c in pool_ids if c in known]
        if bad:
            raise PipelineError(f"params: unknown.classes {bad} are also in data.known_classes")
    pool = [r for r in rows if r["label"] in set(pool_ids)]
    if not pool:
        raise PipelineError(f"params: unknown.classes {pool_ids} have no images in {args.index}")
    quotas = {s: u[f"{s}_images"] for s in manifest.SPLITS}
    chosen = manifest.select_unknown(pool, quotas, p["seed"])
    classes = [*P.known_classes(p["data"]).values(), manifest.UNKNOWN]
    with atomic_dir(args.out) as tmp:
        for s in manifest.SPLITS:
            merged = manifest.read(args.split / f"{s}.csv") + chosen[s]
            manifest.write(tmp / f"{s}.csv", merged, extra=("origin",))
        write_json(tmp / "classes.json", {"classes": classes, "ids": [*known.keys(), "unknown"],
                                          "unknown_ids": pool_ids})
        write_json(tmp / "split_report.json", manifest.leakage_report(
            {s: manifest.read(tmp / f"{s}.csv") for s in manifest.SPLITS}))
    counts = {s: len(v) for s, v in chosen.items()}
    print(f"add_unknown_class: unknown images per split {counts} from classes {pool_ids} -> {args.out}/")


if __name__ == "__main__":
    entry(main)
