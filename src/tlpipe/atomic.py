"""Atomic writes: an output either is complete or does not exist.

Each output is written under a temporary name in its own folder and renamed into place, so a
process killed at any moment (even by SIGKILL, which skips every `finally`) leaves the previous
output or none, never a half-written one. Temporaries are named `.<name>.~<pid>~<random>.tmp`;
the next write of the same output removes those whose process no longer runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.~{os.getpid()}~"


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except FileNotFoundError:  # another writer cleaned it first
        pass


def _dead_writer(m: re.Match[str] | None) -> bool:
    """A temporary's name matched, and the pid in it is another process that no longer exists."""
    return m is not None and int(m.group(1)) != os.getpid() and not alive(int(m.group(1)))


def clean_stale(path: str | Path) -> list[Path]:
    """Remove temporaries of `path` left by killed processes; return what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.~(\d+)~[^~/]*\.tmp$")
    removed = []
    for p in path.parent.iterdir():
        if _dead_writer(pattern.match(p.name)):
            _remove(p)
            removed.append(p)
    return removed


STALE = re.compile(r"^\..+\.~(\d+)~[^~/]*\.tmp$")


def clean_stale_tree(folders: tuple[str, ...] = ("data", "models", "metrics", "plots", "reports")) -> list[Path]:
    """Remove every temporary of a killed writer (dead pid) under `folders`: each stage does this when it
    starts, so an interrupted run's leftovers go even when the output they were for is never rewritten."""
    removed = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*dirnames, *filenames]:
                if _dead_writer(STALE.match(name)):
                    _remove(Path(dirpath) / name)
                    removed.append(Path(dirpath) / name)
            dirnames[:] = [d for d in dirnames if not STALE.match(d) and d != ".dvc"]
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; it replaces `path` only if the block succeeds.

    The old folder is renamed aside before the new one is renamed in, so a kill between the two
    leaves no folder (never a half-deleted one); the aside copy is removed afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = tmp.with_name(tmp.name[: -len(".tmp")] + "-old.tmp")
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists() or leftover.is_symlink():
                _remove(leftover)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (byte-stable for identical content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
