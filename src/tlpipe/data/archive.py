"""Read images straight out of a zip archive, refusing entries that would escape a folder.

Tar archives (plain, gz, bz2, xz) are never extracted onto the file system: `tar_to_zip` streams
them once, refuses any entry that escapes the folder or is a link or device, and repacks the
regular files into a zip that the same zip reader serves.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import PipelineError

SEP = "::"  # manifest path of an archive member: "<archive name>::<member path>"
COPY_CHUNK = 1 << 20  # bytes per read when repacking a tar member


def check_name(archive: Path, name: str) -> None:
    """Reject absolute paths, drive letters and '..' components."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise PipelineError(f"archive {archive}: entry {name!r} escapes the target folder")


def check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    """Reject absolute paths, '..' components, symlink and device entries."""
    name = info.filename
    check_name(archive, name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise PipelineError(f"archive {archive}: entry {name!r} is a symlink; refusing it")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PipelineError(f"archive {archive}: entry {name!r} is not a regular file or folder; refusing it")


def check_tar_member(archive: Path, info: tarfile.TarInfo) -> None:
    """Reject escaping names, symlinks, hardlinks, devices and fifos: only files and folders pass."""
    check_name(archive, info.name)
    if info.issym() or info.islnk():
        raise PipelineError(f"archive {archive}: entry {info.name!r} is a {'symlink' if info.issym() else 'hardlink'}"
                            f" (to {info.linkname!r}); refusing it")
    if not (info.isfile() or info.isdir()):
        raise PipelineError(f"archive {archive}: entry {info.name!r} is a device or special file; refusing it")


def kind(archive: Path) -> str:
    """'zip' or 'tar' (by content, not by name); one clear error for anything else."""
    if not archive.is_file():
        raise PipelineError(f"archive not found: {archive}")
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise PipelineError(f"archive {archive}: not a zip or tar archive")


def tar_to_zip(archive: Path, dest: Path) -> Path:
    """Stream a (compressed) tar once and repack its regular files into the zip `dest`.

    Every entry is checked first (escaping names, links, devices refuse the whole archive);
    nothing is written outside `dest`. Members are stored uncompressed (images already are)."""
    part = dest.with_name(dest.name + ".part")
    try:
        with tarfile.open(archive, "r|*") as tf, zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as zf:
            for info in tf:
                check_tar_member(archive, info)
                name = "/".join(p for p in info.name.split("/") if p not in ("", "."))  # `tar -C dir .` writes ./x
                if not name:
                    continue
                if info.isdir():  # kept, so an empty class folder is still seen (and refused)
                    zf.writestr(zipfile.ZipInfo(f"{name}/", date_time=(1980, 1, 1, 0, 0, 0)), b"")
                else:
                    src = tf.extractfile(info)
                    assert src is not None  # a regular file always has data
                    with zf.open(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as out:
                        shutil.copyfileobj(src, out, COPY_CHUNK)  # streamed: a huge member never sits in memory
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        part.unlink(missing_ok=True)
        raise PipelineError(f"archive {archive}: not a readable tar archive ({exc})") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


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
