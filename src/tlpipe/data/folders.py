"""Your own images: list files (`filelist`) or one folder per class (`imagefolder`), as index rows.

Rows carry `split` when the data fixes it (a test list, or train/ valid/ test/ folders); the split
stage keeps those and carves the missing splits out of train. Every image is its own group.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from ..errors import PipelineError
from .tree import Tree

Row = dict[str, str]
SPLIT_DIRS = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
              "test": "test", "testing": "test"}  # folder name (any case) -> split


def image_extensions() -> frozenset[str]:
    """File suffixes Pillow can open (lower case, with the dot)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _label(text: str) -> str:
    """Integer labels are normalised ('007' -> '7') to match data.known_classes ids; names stay."""
    return str(int(text)) if re.fullmatch(r"\d+", text) else text


def _row(tree: Tree, raw: Path, rel: str, label: str, split: str) -> Row:
    path = tree.store(rel, raw)
    return {"path": path, "label": label, "group": path, "split": split, "source": tree.where(rel)}


def _list_text(tree: Tree, name: str) -> tuple[str, str]:
    """(text, where) of a list file: a path inside the root, else a local file."""
    rel = name.strip("/")
    if tree.has(rel):
        return tree.read(rel).decode("utf-8-sig"), tree.where(rel)
    local = Path(name).expanduser()
    if local.is_file():
        return local.read_text(encoding="utf-8-sig"), str(local)
    raise PipelineError(f"filelist: list file {name!r} is neither in {tree.describe()} nor a local file")


def parse_list(text: str, where: str) -> list[tuple[str, str]]:
    """Lines `relative/path label` (split at the last whitespace, so paths may hold spaces);
    blank lines and lines starting with # are skipped."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise PipelineError(f"filelist: {where} line {n}: expected `path label`, got {line!r}")
        rel = fields[0].replace("\\", "/")
        while rel.startswith("./"):
            rel = rel[2:]
        out.append((rel, _label(fields[1])))
    if not out:
        raise PipelineError(f"filelist: {where} lists no images")
    return out


def filelist(tree: Tree, raw: Path, train_list: str, test_list: str = "") -> list[Row]:
    """Index the images named by the list files; the test list (when given) fixes the test split."""
    rows: list[Row] = []
    seen: dict[str, str] = {}
    for split, name in (("train", train_list), ("test", test_list)):
        if not name:
            continue
        text, where = _list_text(tree, name)
        for rel, label in parse_list(text, where):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise PipelineError(f"filelist: {where} names {rel!r}, which is outside the root")
            if not tree.has(rel):
                raise PipelineError(f"filelist: {where} names {rel!r}, which is not in {tree.describe()}")
            if rel in seen:
                raise PipelineError(f"filelist: {rel!r} is listed twice ({seen[rel]} and {where})")
            seen[rel] = where
            rows.append(_row(tree, raw, rel, label, split if test_list else ""))
    return rows


def _classes(tree: Tree, raw: Path, base: str, split: str, exts: frozenset[str]) -> list[Row]:
    """Rows of the class folders directly under `base` ('' or 'train/'); every class folder must hold images."""
    rows: list[Row] = []
    per_class: dict[str, int] = {}
    classes = sorted(d[len(base):] for d in tree.dirs if d.startswith(base) and "/" not in d[len(base):])
    for cls in classes:
        per_class[cls] = 0
    for rel in tree.files:
        if not rel.startswith(base) or Path(rel).suffix.lower() not in exts:
            continue
        inner = rel[len(base):]
        if "/" not in inner:
            raise PipelineError(f"imagefolder: image {tree.where(rel)} is not inside a class folder")
        cls = inner.split("/", 1)[0]
        per_class[cls] = per_class.get(cls, 0) + 1
        rows.append(_row(tree, raw, rel, cls, split))
    empty = [c for c, n in per_class.items() if n == 0]
    if empty:
        raise PipelineError(f"imagefolder: class folder {tree.where(base + empty[0])} holds no images")
    return rows


def imagefolder(tree: Tree, raw: Path) -> list[Row]:
    """One folder per class; train/ valid/ test/ folders above them (when present) fix the splits."""
    exts = image_extensions()
    top = sorted(d for d in tree.dirs if "/" not in d)
    split_dirs = [d for d in top if d.lower() in SPLIT_DIRS]
    if not split_dirs:
        return _classes(tree, raw, "", "", exts)
    others = [d for d in top if d not in split_dirs]
    if others:
        raise PipelineError(f"imagefolder: {tree.describe()} mixes split folders ({', '.join(split_dirs)}) with "
                            f"other folders ({', '.join(others)}); use one layout")
    by_split: dict[str, str] = {}
    for d in split_dirs:
        s = SPLIT_DIRS[d.lower()]
        if s in by_split:
            raise PipelineError(f"imagefolder: {tree.describe()} has two {s} folders: {by_split[s]} and {d}")
        by_split[s] = d
    if "train" not in by_split:
        raise PipelineError(f"imagefolder: {tree.describe()} has split folders ({', '.join(split_dirs)}) "
                            f"but no train folder")
    rows: list[Row] = []
    for s in ("train", "valid", "test"):
        if s in by_split:
            rows.extend(_classes(tree, raw, f"{by_split[s]}/", s, exts))
    return rows
