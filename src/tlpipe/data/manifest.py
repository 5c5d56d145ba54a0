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


def _take_images(order: list[str], groups: dict[str, list[Row]], start: int, n: int) -> int:
    """Index after the whole groups, from `start`, that first reach `n` images (len(order) + 1 if they never do)."""
    have = 0
    while have < n:
        if start >= len(order):
            return len(order) + 1
        have += len(groups[order[start]])
        start += 1
    return start


def _assign(label: str, order: list[str], groups: dict[str, list[Row]], make: tuple[str, ...],
            fractions: dict[str, float], per_class: dict[str, int]) -> dict[str, list[str]]:
    """Groups of one class per split: counted splits (per_class > 0) first, the rest by fractions."""
    out: dict[str, list[str]] = {s: [] for s in make}
    counted = [s for s in ("test", "valid") if s in make and per_class.get(s, 0) > 0]
    start = 0
    for s in counted:
        end = _take_images(order, groups, start, per_class[s])
        out[s] = order[start:end]
        start = end
    rest = order[start:]
    free = [s for s in make if s not in counted]
    total = sum(fractions[s] for s in free)
    images = sum(len(g) for g in groups.values())
    if start > len(order) or not rest or (total > 0 and len(rest) < sum(fractions[s] > 0 for s in free)):
        wanted = " + ".join(f"{per_class[s]} {s}" for s in counted)
        raise PipelineError(
            f"split: class {label!r} has {images} image(s) in {len(order)} group(s), too few for {wanted} per class "
            f"and a share for {', '.join(free)} (lower split.valid_per_class / split.test_per_class, or add data)")
    shares = {s: (fractions[s] / total if total > 0 else float(s == "train")) for s in SPLITS}
    shares = {s: (shares[s] if s in free else 0.0) for s in SPLITS}
    counts = _allocate(len(rest), shares, label)
    i = 0
    for s in SPLITS:
        if s in free:
            out[s] = rest[i : i + counts[s]]
        i += counts[s]
    return out


def _split_pool(rows: list[Row], make: tuple[str, ...], fractions: dict[str, float], seed: int,
                per_class: dict[str, int]) -> dict[str, list[Row]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for label, groups in sorted(_groups_by_label(rows).items()):
        names = sorted(groups)
        order = [names[i] for i in rng.permutation(len(names))]
        if make == SPLITS and not any(per_class.get(s, 0) > 0 for s in SPLITS):
            counts = _allocate(len(order), fractions, label)
            start = 0
            for s in SPLITS:
                for g in order[start : start + counts[s]]:
                    out[s].extend(groups[g])
                start += counts[s]
            continue
        for s, chosen in _assign(label, order, groups, make, fractions, per_class).items():
            for g in chosen:
                out[s].extend(groups[g])
    return out


def fixed_splits(rows: list[Row]) -> set[str]:
    """The splits the data itself fixes (index column `split`); empty when it fixes none."""
    given = {r.get("split") or "" for r in rows}
    if given <= {""}:
        return set()
    if "" in given:
        raise PipelineError("index: some rows have a split and others none; give every image a split or none")
    unknown = sorted(given - set(SPLITS))
    if unknown:
        raise PipelineError(f"index: unknown split value(s) {unknown} (use {', '.join(SPLITS)})")
    if "train" not in given:
        raise PipelineError(f"index: the data fixes the splits {sorted(given)} but has no train split")
    return given


def split(rows: list[Row], fractions: dict[str, float], seed: int, by_group: bool = True,
          per_class: dict[str, int] | None = None) -> dict[str, list[Row]]:
    """Stratified, seeded split by whole groups (per class), so no group spans two splits.

    Rows whose `split` is fixed by the data (a test list, train/ valid/ test/ folders) keep it; the
    splits the data lacks are carved out of its train rows, with the fractions renormalised over
    the splits being made. `per_class` {"valid": n, "test": n}: a split with n > 0 takes whole
    groups of each class until it holds n images (overriding its fraction); train keeps the rest."""
    per_class = per_class or {}
    if not by_group:
        rows = [{**r, "group": r["path"]} for r in rows]
    given = fixed_splits(rows)
    if not given:
        out = _split_pool(rows, SPLITS, fractions, seed, per_class)
    else:
        fixed = {s: [r for r in rows if r["split"] == s] for s in given if s != "train"}
        labels = sorted({r["label"] for r in rows})
        for s, part in fixed.items():
            have = {r["label"] for r in part}
            missing = [lab for lab in labels if lab not in have]
            if missing:
                raise PipelineError(f"split: class {missing[0]!r} has no images in the data's {s} split")
        make = ("train", *[s for s in ("valid", "test") if s not in given])
        out = _split_pool([r for r in rows if r["split"] == "train"], make, fractions, seed, per_class)
        for s, part in fixed.items():
            out[s] = out[s] + part
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
    if not seen and classes == "rest":
        raise PipelineError("params: unknown.classes 'rest' selects no class (every class is known or held out)")
    return seen, held


def _select_fixed(pool: list[Row], quotas: dict[str, int], seed: int) -> dict[str, list[Row]]:
    """select_unknown for data with fixed splits: test unknowns come only from the data's test rows,
    valid ones from its valid rows (else from train), train ones from its train rows."""
    by = {s: [r for r in pool if r.get("split") == s] for s in SPLITS}
    zero = {s: 0 for s in SPLITS}
    parts = [select_unknown(by["test"], {**zero, "test": quotas["test"]}, seed)]
    if by["valid"]:
        parts.append(select_unknown(by["valid"], {**zero, "valid": quotas["valid"]}, seed))
        parts.append(select_unknown(by["train"], {**zero, "train": quotas["train"]}, seed))
    else:
        parts.append(select_unknown(by["train"], {**zero, "valid": quotas["valid"], "train": quotas["train"]}, seed))
    return {s: sorted((r for p in parts for r in p[s]), key=lambda r: r["path"]) for s in SPLITS}


def with_unknown(known_splits: dict[str, list[Row]], pool: list[Row], holdout: list[Row],
                 quotas: dict[str, int], holdout_test: int, seed: int) -> dict[str, list[Row]]:
    """Known rows keep their split; seen-unknown groups fill every split, held-out classes only test.
    When the data fixes splits, unknown images keep to them too (see _select_fixed)."""
    select = _select_fixed if fixed_splits(pool + holdout) else select_unknown
    chosen = select(pool, quotas, seed)
    held = select(holdout, {"train": 0, "valid": 0, "test": holdout_test}, seed + 1) if holdout else {}
    return {s: known_splits[s] + chosen[s] + held.get(s, []) for s in SPLITS}
