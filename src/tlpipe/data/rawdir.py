"""The raw folder (data/raw): the dataset fetched or generated, every image checked, an index written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import atomic_dir
from . import checks, manifest, sources


def build(out: Path, data: dict[str, Any]) -> dict[str, int]:
    """The download stage: `out` holds the data, index.csv (path,label,group[,split]) and bad_images.csv
    (images dropped under data.bad_images: skip), complete or absent. Returns the counts for metrics/data.json."""
    with atomic_dir(out) as tmp:
        rows = sources.build(tmp, data)
        rows = sources.limit_per_class(rows, data["max_per_class"])
        rows, bad = checks.scan(tmp, rows, data["bad_images"])
        labels = checks.require_classes(rows, sources.describe(data))
        fixed = any(r.get("split") for r in rows)
        manifest.write(tmp / "index.csv", rows, extra=("split",) if fixed else ())
        checks.write_bad(tmp / "bad_images.csv", bad)
    return {"images": len(rows), "classes": len(labels), "bad_images": len(bad)}
