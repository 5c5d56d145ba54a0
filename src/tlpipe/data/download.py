"""Fetch a URL to disk: streamed, progress bar, retries with resume, sha256 verification."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .. import progress
from ..errors import PipelineError

ALLOWED_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20


def digest_of(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    return digest_of(path, "sha256")


def _check_scheme(url: str) -> str:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise PipelineError(f"download: unsupported URL scheme {scheme!r} in {url} (use http, https or file)")
    return scheme


def _copy_file_url(url: str, part: Path) -> None:
    src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not src.is_file():
        raise PipelineError(f"download: file not found: {src} (from data.url {url})")
    shutil.copyfile(src, part)


def _range_start(resp) -> int | None:
    """First byte offset of a 206 reply's Content-Range ('bytes START-END/TOTAL')."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _stream(url: str, part: Path, timeout: float) -> None:
    """Append the remaining bytes of `url` to `part`, resuming with a Range request if possible."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "tlpipe"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resumed = bool(have) and resp.status == 206 and _range_start(resp) == have
        mode = "ab" if resumed else "wb"
        length = resp.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        name = Path(urllib.parse.urlparse(url).path).name
        t0 = time.perf_counter()
        with open(part, mode) as f, tqdm(
            total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
            desc=f"download {name}", mininterval=1.0, disable=not progress.interactive(),
        ) as bar:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
        if not progress.interactive():
            print(f"download {name}: {part.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _http_fetch(url: str, part: Path, retries: int, timeout: float) -> None:
    for attempt in range(retries + 1):
        try:
            _stream(url, part, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries:
                raise PipelineError(f"download: HTTP {exc.code} {exc.reason} for {url}") from exc
        except urllib.error.URLError as exc:
            raise PipelineError(
                f"download: cannot reach {url} ({exc.reason}); offline? download the file yourself "
                f"and set data.url to file:///absolute/path/to/it"
            ) from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            if attempt == retries:
                raise PipelineError(f"download: {url} failed after {retries + 1} attempts: {exc}") from exc
        time.sleep(min(2.0**attempt * 0.5, 10.0))


def fetch(url: str, dest: Path, sha256: str = "", retries: int = 4, timeout: float = 60.0, md5: str = "") -> Path:
    """Download `url` to `dest` (atomically); verify `sha256` and `md5` when given; remove a bad file."""
    scheme = _check_scheme(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)  # resume only within this call: a leftover may be another file's
    if scheme == "file":
        _copy_file_url(url, part)
    else:
        _http_fetch(url, part, retries, timeout)
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = digest_of(part, algorithm)
            if got != expected.lower():
                part.unlink()
                raise PipelineError(f"download: {algorithm} mismatch for {url}: expected {expected}, got {got} "
                                    f"(file removed)")
    os.replace(part, dest)
    return dest
