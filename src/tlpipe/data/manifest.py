"""Manifests (CSV: path,label,group[,origin]), the group-aware stratified split, the unknown pool."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_path
from ..errors import PipelineError

Row = dict[str, str]
SPLITS = ("train", "valid", "test")
UNKNOWN = "unknown"


def read(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label", "group"} <= set(reader.fieldnames):
            raise PipelineError(f"manifest {path}: header must include path,label,group")
        return list(reader)


def write(path: str | Path, rows: Iterable[Row], extra: tuple[str, ...] = ()) -> None:
    fields = ["path", "label", "group", *extra]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _groups_by_label(rows: list[Row]) -> dict[str, dict[str, list[Row]]]:
    out: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        out[row["label"]][row["group"]].append(row)
    return out


def _allocate(n_groups: int, fractions: dict[str, float], label: str) -> dict[str, int]:
    """Number of groups per split: each split with a non-zero fraction gets at least one."""
    wanted = [s for s in SPLITS if fractions[s] > 0]
    if n_groups < len(wanted):
        raise PipelineError(
            f"split: class {label!r} has {n_groups} group(s), too few for {len(wanted)} splits "
            f"(add data, or set split.by_group: false to split single images)"
        )
    counts = {s: (max(1, int(round(fractions[s] * n_groups))) if s in wanted else 0) for s in SPLITS}
    while sum(counts.values()) > n_groups:
        biggest = max((s for s in SPLITS if counts[s] > 1), key=lambda s: counts[s])
        counts[biggest] -= 1
    counts["train" if "train" in wanted else wanted[0]] += n_groups - sum(counts.values())
    return counts


def split(rows: list[Row], fractions: dict[str, float], seed: int, by_group: bool = True) -> dict[str, list[Row]]:
    """Stratified, seeded split by whole groups (per class), so no group spans two splits."""
    if not by_group:
        rows = [{**r, "group": r["path"]} for r in rows]
    rng = np.random.default_rng(seed)
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for label, groups in sorted(_groups_by_label(rows).items()):
        names = sorted(groups)
        order = [names[i] for i in rng.permutation(len(names))]
        counts = _allocate(len(order), fractions, label)
        start = 0
        for s in SPLITS:
            for g in order[start : start + counts[s]]:
                out[s].extend(groups[g])
            start += counts[s]
    return {s: sorted(v, key=lambda r: r["path"]) for s, v in out.items()}


def leakage_report(splits: dict[str, list[Row]]) -> dict:
    """Images, groups and per-class counts per split, and the groups shared by any two splits."""
    groups = {s: {r["group"] for r in rows} for s, rows in splits.items()}
    names = list(splits)
    shared = {
        f"{a}&{b}": sorted(groups[a] & groups[b]) for i, a in enumerate(names) for b in names[i + 1 :]
    }
    per_class: dict[str, dict[str, int]] = {}
    for s, rows in splits.items():
        for r in rows:
            per_class.setdefault(r["label"], {k: 0 for k in names})[s] += 1
    return {
        "images": {s: len(rows) for s, rows in splits.items()},
        "groups": {s: len(g) for s, g in groups.items()},
        "per_class": per_class,
        "shared_groups": shared,
        "leak_free": all(not v for v in shared.values()),
    }


def select_unknown(pool: list[Row], quotas: dict[str, int], seed: int) -> dict[str, list[Row]]:
    """Pick whole groups of the unknown pool, round-robin over classes, for test, valid then train."""
    rng = np.random.default_rng(seed)
    queues = []
    for label, groups in sorted(_groups_by_label(pool).items()):
        names = sorted(groups)
        queues.append([groups[names[i]] for i in rng.permutation(len(names))])
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for s in ("test", "valid", "train"):
        while len(out[s]) < quotas[s] and any(queues):
            for q in queues:
                if q and len(out[s]) < quotas[s]:
                    out[s].extend({**r, "origin": r["label"], "label": UNKNOWN} for r in q.pop(0))
    return {s: sorted(v, key=lambda r: r["path"]) for s, v in out.items()}


def unknown_ids(labels: set[str], known: set[str], classes: list | str, holdout: list) -> tuple[list[str], list[str]]:
    """(seen, holdout) label ids of the unknown pool; 'rest' means every label that is neither known nor held out."""
    held = [str(c) for c in holdout]
    seen = sorted(labels - known - set(held), key=lambda x: (len(x), x)) if classes == "rest" else [str(c) for c in classes]
    for name, ids in (("unknown.classes", seen), ("unknown.holdout_classes", held)):
        clash = [c for c in ids if c in known]
        if clash:
            raise PipelineError(f"params: {name} {clash} are also in data.known_classes")
        absent = [c for c in ids if c not in labels]
        if absent:
            raise PipelineError(f"params: {name} {absent} have no images in the dataset")
    both = set(seen) & set(held)
    if both:
        raise PipelineError(f"params: unknown.classes and unknown.holdout_classes share {sorted(both)}")
    if not seen:
        raise PipelineError("params: unknown.classes selects no class")
    return seen, held


def with_unknown(known_splits: dict[str, list[Row]], pool: list[Row], holdout: list[Row],
                 quotas: dict[str, int], holdout_test: int, seed: int) -> dict[str, list[Row]]:
    """Known rows keep their split; seen-unknown groups fill every split, held-out classes only test."""
    chosen = select_unknown(pool, quotas, seed)
    held = select_unknown(holdout, {"train": 0, "valid": 0, "test": holdout_test}, seed + 1) if holdout else {}
    return {s: known_splits[s] + chosen[s] + held.get(s, []) for s in SPLITS}
