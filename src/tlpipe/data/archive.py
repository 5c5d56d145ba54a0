"""Read images straight out of a zip archive, refusing entries that would escape a folder."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import PipelineError

SEP = "::"  # manifest path of an archive member: "<archive name>::<member path>"


def check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    """Reject absolute paths, '..' components and symlink entries."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise PipelineError(f"archive {archive}: entry {name!r} escapes the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PipelineError(f"archive {archive}: entry {name!r} is a symlink; refusing it")


def open_zip(archive: Path) -> zipfile.ZipFile:
    """Open a zip archive and check every entry; one clear error if it is not a zip."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PipelineError(f"archive {archive}: not a readable zip archive ({exc})") from exc
    for info in zf.infolist():
        check_member(archive, info)
    return zf


def member_path(archive: Path, member: str) -> str:
    return f"{archive.name}{SEP}{member}"


def split_member(path: str) -> tuple[str, str] | None:
    """Return (archive name, member) for an archive path, else None."""
    if SEP not in path:
        return None
    archive, member = path.split(SEP, 1)
    return archive, member
