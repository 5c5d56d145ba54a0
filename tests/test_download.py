"""data/download.py: streamed fetch over loopback HTTP and file://, sha256 checks, retries with resume."""

from __future__ import annotations

import hashlib
import os
import re
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from tlpipe.data import download
from tlpipe.data.download import fetch, sha256_of
from tlpipe.errors import PipelineError

PAYLOAD = bytes(range(256)) * 1500 + os.urandom(1234)  # ~385 KB, not a multiple of anything
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
TINY_SHA256 = "f7793ad7148e710a5a023ad812bcfd17b1c4fd7e020e70664480ff3dbcb44e43"


@pytest.fixture
def served(tmp_path, http_server):
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "data.bin").write_bytes(PAYLOAD)
    return http_server(folder), folder


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """Retries sleep with backoff; the tests don't need to wait for it."""
    monkeypatch.setattr(download.time, "sleep", lambda s: None)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_sha256_of_matches_hashlib(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(PAYLOAD)
    assert sha256_of(f) == PAYLOAD_SHA


def test_http_fetch_with_correct_sha(served, tmp_path):
    base, _ = served
    dest = tmp_path / "out" / "data.bin"
    got = fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=0, timeout=10)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == []


def test_sha_accepted_in_upper_case(served, tmp_path):
    base, _ = served
    dest = tmp_path / "data.bin"
    fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA.upper(), retries=0, timeout=10)
    assert dest.read_bytes() == PAYLOAD


def test_http_fetch_without_sha(served, tmp_path):
    base, _ = served
    dest = tmp_path / "data.bin"
    fetch(f"{base}/data.bin", dest, retries=0, timeout=10)
    assert dest.read_bytes() == PAYLOAD


def test_sha_mismatch_raises_and_removes_file(served, tmp_path):
    base, _ = served
    out = tmp_path / "out"
    dest = out / "data.bin"
    wrong = "0" * 64
    with pytest.raises(PipelineError) as info:
        fetch(f"{base}/data.bin", dest, sha256=wrong, retries=0, timeout=10)
    msg = str(info.value)
    assert "sha256 mismatch" in msg and wrong in msg and PAYLOAD_SHA in msg
    assert not dest.exists()
    assert list(out.iterdir()) == []


def test_sha_mismatch_keeps_previous_good_file(served, tmp_path):
    base, _ = served
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"previous good download")
    with pytest.raises(PipelineError):
        fetch(f"{base}/data.bin", dest, sha256="1" * 64, retries=0, timeout=10)
    assert dest.read_bytes() == b"previous good download"


def test_404_names_url_and_leaves_nothing(served, tmp_path):
    base, _ = served
    url = f"{base}/missing.zip"
    dest = tmp_path / "out" / "missing.zip"
    with pytest.raises(PipelineError) as info:
        fetch(url, dest, retries=3, timeout=10)
    assert url in str(info.value) and "404" in str(info.value)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_unreachable_server_suggests_file_url(closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/GTSRB.zip"
    with pytest.raises(PipelineError) as info:
        fetch(url, tmp_path / "GTSRB.zip", retries=0, timeout=5)
    assert url in str(info.value) and "file://" in str(info.value)
    assert not (tmp_path / "GTSRB.zip").exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/data.bin", "s3://bucket/data.bin", "/abs/path/data.bin",
                                 "javascript:alert(1)"])
def test_unsupported_scheme_refused(url, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(PipelineError) as info:
        fetch(url, dest)
    assert "unsupported URL scheme" in str(info.value) and url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_file_url_copies_and_verifies(tmp_path):
    src_dir = tmp_path / "mirror with space"
    src_dir.mkdir()
    src = src_dir / "data.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "data.bin"
    fetch(src.as_uri(), dest, sha256=PAYLOAD_SHA)  # as_uri() percent-encodes the space
    assert dest.read_bytes() == PAYLOAD
    assert src.read_bytes() == PAYLOAD  # source untouched
    assert _leftovers(dest.parent) == []


def test_file_url_sha_mismatch_removes_copy(tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "data.bin"
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        fetch(src.as_uri(), dest, sha256="f" * 64)
    assert list(dest.parent.iterdir()) == []
    assert src.read_bytes() == PAYLOAD


def test_file_url_missing_names_path(tmp_path):
    missing = tmp_path / "nope.zip"
    with pytest.raises(PipelineError) as info:
        fetch(missing.as_uri(), tmp_path / "raw" / "nope.zip")
    assert str(missing) in str(info.value)


def test_tiny_archive_over_http(tiny_zip, http_server, tmp_path):
    base = http_server(tiny_zip.parent)
    dest = fetch(f"{base}/{tiny_zip.name}", tmp_path / tiny_zip.name, sha256=TINY_SHA256, retries=0, timeout=10)
    assert dest.read_bytes() == tiny_zip.read_bytes()


# ------------------------------------------------------------------ flaky server: drops, 5xx, Range
class FlakyHandler(SimpleHTTPRequestHandler):
    """Serves PAYLOAD at any path. The first `drops` responses stop half way and close the
    connection; `fail_5xx` responses before that answer 503. Range requests are honoured when
    `honour_range` is set. Every request's Range header is recorded in `log`."""

    drops = 0
    fail_5xx = 0
    honour_range = True
    log: list = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        rng = self.headers.get("Range")
        cls.log.append(rng)
        if cls.fail_5xx > 0:
            cls.fail_5xx -= 1
            self.send_error(503, "try later")
            return
        start = 0
        if rng and cls.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cls.drops > 0:
            cls.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def _flaky(drops=0, fail_5xx=0, honour_range=True):
    return type("Flaky", (FlakyHandler,), {"drops": drops, "fail_5xx": fail_5xx,
                                           "honour_range": honour_range, "log": []})


def test_dropped_connection_is_resumed_with_range(http_server, tmp_path):
    handler = _flaky(drops=1)
    base = http_server(tmp_path, handler)
    dest = tmp_path / "dl" / "data.bin"
    fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=2, timeout=10)
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == []
    # second request asked only for the missing tail
    assert len(handler.log) == 2 and handler.log[0] is None
    assert handler.log[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_dropped_twice_then_served(http_server, tmp_path):
    handler = _flaky(drops=2)
    base = http_server(tmp_path, handler)
    dest = tmp_path / "data.bin"
    fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=2, timeout=10)
    assert dest.read_bytes() == PAYLOAD
    assert len(handler.log) == 3


def test_dropped_connection_server_without_range_restarts(http_server, tmp_path):
    handler = _flaky(drops=1, honour_range=False)
    base = http_server(tmp_path, handler)
    dest = tmp_path / "data.bin"
    fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=2, timeout=10)
    assert dest.read_bytes() == PAYLOAD  # not the first half twice


def test_drops_beyond_retries_raise_and_name_url(http_server, tmp_path):
    handler = _flaky(drops=5)
    base = http_server(tmp_path, handler)
    url = f"{base}/data.bin"
    dest = tmp_path / "data.bin"
    with pytest.raises(PipelineError) as info:
        fetch(url, dest, sha256=PAYLOAD_SHA, retries=1, timeout=10)
    assert url in str(info.value) and "2 attempts" in str(info.value)
    assert not dest.exists()
    assert len(handler.log) == 2


def test_server_error_is_retried(http_server, tmp_path):
    handler = _flaky(fail_5xx=1)
    base = http_server(tmp_path, handler)
    dest = tmp_path / "data.bin"
    fetch(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=1, timeout=10)
    assert dest.read_bytes() == PAYLOAD
    assert len(handler.log) == 2


def test_persistent_server_error_raises(http_server, tmp_path):
    handler = _flaky(fail_5xx=10)
    base = http_server(tmp_path, handler)
    with pytest.raises(PipelineError, match="HTTP 503"):
        fetch(f"{base}/data.bin", tmp_path / "data.bin", retries=2, timeout=10)
    assert len(handler.log) == 3
