"""Index-time data checks: every image is decoded once (bad ones stop the stage or are skipped),
and the dataset must have at least two classes."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path


from ..atomic import atomic_path
from .. import progress
from ..errors import PipelineError
from . import archive as arc
from . import images

Row = dict[str, str]
BAD_FIELDS = ("path", "reason")
POLICIES = ("skip", "error")


def _where(row: Row) -> str:
    """How to name an image to the user: its source (folder file, archive member) when known."""
    return row.get("source") or row["path"]


def scan(raw: Path, rows: list[Row], policy: str) -> tuple[list[Row], list[Row]]:
    """Decode every indexed image (the decode stage's own reader and decoder, no resize).

    policy 'error': the first bad image raises one line naming it; 'skip': bad images are dropped
    (a copied file is deleted) and returned as {path, reason} rows."""
    if policy not in POLICIES:
        raise PipelineError(f"params: data.bad_images must be one of {', '.join(POLICIES)}; got {policy!r}")
    good: list[Row] = []
    bad: list[Row] = []
    reader = images.Reader(raw)
    try:
        for row in progress.bar(rows, "check images", unit="images"):
            where = _where(row)
            try:
                images.decode(reader.read(row["path"]), where, None)
            except PipelineError as exc:
                reason = str(exc).removeprefix(f"image {where}: ")
                if policy == "error":
                    raise PipelineError(f"bad image {where}: {reason} (data.bad_images: skip drops such "
                                        f"images and lists them in bad_images.csv)") from exc
                bad.append({"path": where, "reason": reason})
                if arc.split_member(row["path"]) is None:
                    (raw / row["path"]).unlink(missing_ok=True)
            else:
                good.append(row)
    finally:
        reader.close()
    return good, bad


def require_classes(rows: list[Row], where: str) -> list[str]:
    """The sorted labels; fewer than two is an error naming the source."""
    labels = sorted(Counter(r["label"] for r in rows), key=lambda x: (len(x), x))
    if len(labels) < 2:
        found = f"only class {labels[0]!r}" if labels else "no images"
        raise PipelineError(f"data: {where} has {found}; a classifier needs at least two classes")
    return labels


def write_bad(path: Path, bad: list[Row]) -> None:
    """bad_images.csv: one row per skipped image (header only when none)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(BAD_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(bad)
