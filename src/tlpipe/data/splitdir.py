"""The split folder (data/split, data/split_unknown): its manifests, classes.json and decoded image cache.

One owner for what the split, add_unknown_class and decode stages write and the training and
evaluation stages read. torch is imported only when images are asked for."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import PipelineError
from . import manifest

CLASSES = "classes.json"


@dataclass
class Data:
    """Decoded images (uint8 NCHW tensor) with integer class-index targets."""

    images: Any  # torch.Tensor
    targets: Any  # torch.Tensor
    features: Any = None  # (N, D) pooled ImageNet-backbone features of the plain images, when already computed


def write_classes(folder: Path, classes: list[str], ids: list[str], unknown_ids: list[str] | None = None,
                  holdout_ids: list[str] | None = None) -> None:
    """classes.json: class names in model order, their dataset label ids, the label ids that feed `unknown`
    and the held-out ids (test-only unknowns). The same keys in every split folder."""
    write_json(folder / CLASSES, {"classes": list(classes), "ids": list(ids), "unknown_ids": list(unknown_ids or []),
                                  "holdout_ids": list(holdout_ids or [])})


@dataclass(frozen=True)
class SplitDir:
    """A split folder, the raw data its manifests point into, and its decoded cache (None: decode now)."""

    path: Path
    raw: Path = Path("data/raw")
    cache: Path | None = None

    def manifest(self, split: str) -> Path:
        return self.path / f"{split}.csv"

    def rows(self, split: str) -> list[dict[str, str]]:
        return manifest.read(self.manifest(split))

    def info(self) -> dict[str, Any]:
        """classes.json: class names, label ids, unknown and held-out ids."""
        path = self.path / CLASSES
        if not path.is_file():
            raise PipelineError(f"classes file not found: {path}")
        return json.loads(path.read_text())

    def classes(self) -> list[str]:
        return list(self.info()["classes"])

    def images(self, split: str, size: int, rows: Sequence[int] | None = None) -> Any:
        """uint8 NCHW tensor of a split (of its manifest `rows` only, in that order, when given), copied once out
        of the (memory-mapped) decoded cache."""
        import numpy as np
        import torch

        from . import cache

        arr = cache.load(self.path, split, self.raw, size, self.cache)
        if rows is not None:
            arr = arr[np.asarray(rows, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(np.transpose(arr, (0, 3, 1, 2))))

    def data(self, split: str, classes: list[str], size: int) -> Data:
        """A split's images with class-index targets; one error if a label is not among `classes`."""
        import torch

        rows = self.rows(split)
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({r["label"] for r in rows} - set(index))
        if unknown:
            raise PipelineError(f"manifest {self.manifest(split)}: labels {unknown} are not among the classes {classes}")
        targets = torch.tensor([index[r["label"]] for r in rows], dtype=torch.long)
        return Data(self.images(split, size), targets)


def make_split(index: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The split stage: stratified, seeded, group-aware train/valid/test manifests of the known classes in
    `out` (with classes.json and split_report.json); splits fixed by the data are kept. Returns the report."""
    from ..atomic import atomic_dir
    from ..config.params import known_classes

    rows = manifest.read(index)
    present = {r["label"] for r in rows}
    known = known_classes(params, present)
    missing = [f"{k} ({v})" for k, v in known.items() if k not in present]
    if missing:
        raise PipelineError(f"params: data.known_classes {', '.join(missing)} have no images in {index}")
    rows = [{**r, "label": known[r["label"]], "origin": r["label"]} for r in rows if r["label"] in known]
    fractions = {s: float(params["split"][s]) for s in manifest.SPLITS}
    per_class = {s: int(params["split"][f"{s}_per_class"]) for s in ("valid", "test")}
    splits = manifest.split(rows, fractions, params["seed"], params["split"]["by_group"], per_class)
    report = manifest.leakage_report(splits)
    fixed = sorted(manifest.fixed_splits(rows))
    if fixed:
        report["fixed_by_data"] = fixed  # splits taken from the data itself, not drawn
    if not report["leak_free"]:
        raise PipelineError(f"split: groups shared between splits: {report['shared_groups']}")
    with atomic_dir(out) as tmp:
        for s, part in splits.items():
            manifest.write(tmp / f"{s}.csv", part, extra=("origin",))
        write_classes(tmp, list(known.values()), list(known.keys()))
        write_json(tmp / "split_report.json", report)
    return report


def add_unknown(index: Path, split: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The add_unknown_class stage: whole groups of classes outside the task become `unknown` in every split
    of `split`, written to `out`; held-out classes go to test only. Returns counts and the ids used."""
    from ..atomic import atomic_dir
    from ..config.params import known_classes

    unknown = params["unknown"]
    rows = manifest.read(index)
    known = known_classes(params, {r["label"] for r in rows})
    seen, held = manifest.unknown_ids({r["label"] for r in rows}, set(known), unknown["classes"],
                                      unknown["holdout_classes"])
    known_splits = {s: manifest.read(split / f"{s}.csv") for s in manifest.SPLITS}
    merged = manifest.with_unknown(
        known_splits, [r for r in rows if r["label"] in set(seen)], [r for r in rows if r["label"] in set(held)],
        {s: unknown[f"{s}_images"] for s in manifest.SPLITS}, unknown["holdout_test_images"], params["seed"])
    with atomic_dir(out) as tmp:
        for s in manifest.SPLITS:
            manifest.write(tmp / f"{s}.csv", merged[s], extra=("origin",))
        extra = [manifest.UNKNOWN] if seen else []
        write_classes(tmp, [*known.values(), *extra], [*known.keys(), *extra], seen, held)
        write_json(tmp / "split_report.json", manifest.leakage_report(merged))
    counts = {s: sum(r["label"] == manifest.UNKNOWN for r in merged[s]) for s in manifest.SPLITS}
    return {"unknown_images": counts, "seen": seen, "held": held}
