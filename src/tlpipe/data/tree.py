"""A root of your own images: a local folder, or a zip/tar archive fetched into data/raw.

Either way the images end up under data/raw (DVC tracks that folder, and the decode stage reads
only from it): a zip stays as it is and its members are indexed as `name.zip::member`; a tar is
streamed once and repacked into a zip (no extraction: see archive.tar_to_zip); files of a local
folder are copied under data/raw/images/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import os
import shutil
import urllib.parse
from pathlib import Path, PurePosixPath

from ..errors import PipelineError
from . import archive as arc
from .download import fetch

COPY_DIR = "images"  # local-folder images are copied to data/raw/images/<path under the root>
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")


def _hidden(rel: str) -> bool:
    """Dot-files and macOS resource forks are never data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class Tree(ABC):
    """Files and folders under a root, as posix paths relative to it."""

    def __init__(self, files: list[str], dirs: set[str], prefix: str = ""):
        files = [f for f in files if not _hidden(f)]
        dirs = {d for d in dirs if not _hidden(d)} | {p for f in files for p in _parents(f)}
        top = {f.split("/", 1)[0] for f in files} | {d.split("/", 1)[0] for d in dirs}
        if not prefix and len(top) == 1 and files and all("/" in f for f in files):
            wrapper = next(iter(top))
            if any("/" in d for d in dirs if d.startswith(f"{wrapper}/")):
                prefix = f"{wrapper}/"  # one wrapper folder holding folders (flowers.zip -> flowers/...): read inside it
        self.prefix = prefix
        n = len(prefix)
        self.files = sorted(f[n:] for f in files if f.startswith(prefix))
        self.dirs = {d[n:] for d in dirs if d.startswith(prefix) and len(d) > n}
        self._set = set(self.files)

    def has(self, rel: str) -> bool:
        return rel in self._set

    @abstractmethod
    def read(self, rel: str) -> bytes:
        ...

    @abstractmethod
    def where(self, rel: str) -> str:
        ...

    @abstractmethod
    def store(self, rel: str, raw: Path) -> str:
        """Make the file available under `raw`; return its index path."""
        ...

    @abstractmethod
    def describe(self) -> str:
        ...

    def close(self) -> None:
        pass

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FolderTree(Tree):
    """A local folder; stored files are copied into data/raw/images/."""

    def __init__(self, folder: Path):
        self.folder = folder
        files, dirs = [], set()
        for here, subdirs, names in os.walk(folder):
            rel_here = Path(here).relative_to(folder).as_posix()
            base = "" if rel_here == "." else f"{rel_here}/"
            dirs.update(f"{base}{d}" for d in subdirs)
            files.extend(f"{base}{n}" for n in names if (Path(here) / n).is_file())
        super().__init__(files, dirs)

    def _path(self, rel: str) -> Path:
        return self.folder / (self.prefix + rel)

    def read(self, rel: str) -> bytes:
        return self._path(rel).read_bytes()

    def where(self, rel: str) -> str:
        return str(self._path(rel))

    def store(self, rel: str, raw: Path) -> str:
        dest = raw / COPY_DIR / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(rel), dest)
        return f"{COPY_DIR}/{rel}"

    def describe(self) -> str:
        return f"folder {self.folder}"


class ZipTree(Tree):
    """A zip inside data/raw (checked entry by entry); stored files are referenced as members."""

    def __init__(self, archive: Path, origin: str):
        self.archive, self.origin = archive, origin
        self.zf = arc.open_zip(archive)
        infos = self.zf.infolist()
        super().__init__([i.filename for i in infos if not i.is_dir()],
                         {i.filename.rstrip("/") for i in infos if i.is_dir()})

    def read(self, rel: str) -> bytes:
        return self.zf.read(self.prefix + rel)

    def where(self, rel: str) -> str:
        return arc.member_path(self.archive, self.prefix + rel) + f" (from {self.origin})"

    def store(self, rel: str, raw: Path) -> str:
        return arc.member_path(self.archive, self.prefix + rel)

    def describe(self) -> str:
        return f"archive {self.origin}"

    def close(self) -> None:
        self.zf.close()


def _stem(name: str) -> str:
    low = name.lower()
    for suffix in TAR_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem


def from_url(raw: Path, url: str, sha256: str = "", md5: str = "") -> Tree:
    """Fetch a zip or tar into `raw` (checksums checked); a tar is repacked into a zip, then removed."""
    name = Path(urllib.parse.urlparse(url).path).name or "data.zip"
    got = fetch(url, raw / name, sha256=sha256, md5=md5)
    if arc.kind(got) == "zip":
        return ZipTree(got, url)
    dest = raw / f"{_stem(name)}.zip"
    if dest == got:
        dest = raw / f"{_stem(name)}.repacked.zip"
    arc.tar_to_zip(got, dest)
    got.unlink()
    return ZipTree(dest, url)


def open_root(raw: Path, root: str, url: str, sha256: str = "", md5: str = "") -> Tree:
    """data.url (an archive) or data.root (a local folder, or a local zip/tar file)."""
    if url:
        return from_url(raw, url, sha256, md5)
    path = Path(root).expanduser()
    if path.is_file():
        return from_url(raw, path.resolve().as_uri(), sha256, md5)
    if not path.is_dir():
        raise PipelineError(f"data.root: folder not found: {path}")
    return FolderTree(path)

