"""Shared fixtures for the unit tests: src/ on sys.path, a loopback HTTP server, the tiny GTSRB archive."""

from __future__ import annotations

import functools
import hashlib
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

TINY_ZIP = REPO.parent / "shared" / "datasets" / "gtsrb" / "tiny" / "GTSRB_tiny.zip"
TINY_SHA256 = "f7793ad7148e710a5a023ad812bcfd17b1c4fd7e020e70664480ff3dbcb44e43"
TINY_CLASSES = ("1", "12", "13", "14", "17", "25", "38")


def pytest_configure(config: pytest.Config) -> None:
    # pytest.ini defines it too; registering here keeps `-m "not slow"` warning-free without it
    config.addinivalue_line("markers", "slow: long-running tests")


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads spinning against a busy core
    (a 2-core CI box running something else) make backward passes 10-20x slower."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files from `directory`, without request logging on stderr."""

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    """Factory: http_server(directory, handler=QuietHandler) -> 'http://127.0.0.1:<port>'.

    Binds to the loopback interface only, on a free port, served by a ThreadingHTTPServer
    in a daemon thread; every server started is shut down at teardown.
    """
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(directory: str | Path, handler: type = QuietHandler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=1)
def _tiny_sha() -> str:
    return hashlib.sha256(TINY_ZIP.read_bytes()).hexdigest()


@pytest.fixture
def tiny_zip() -> Path:
    """The real tiny GTSRB fixture (7 classes x 2 tracks x 30 frames), checked by sha256."""
    if not TINY_ZIP.is_file():
        pytest.skip(f"fixture archive not found: {TINY_ZIP}")
    assert _tiny_sha() == TINY_SHA256, f"{TINY_ZIP} changed (sha256 {_tiny_sha()})"
    return TINY_ZIP


@pytest.fixture
def no_network(monkeypatch):
    """Make any non-loopback connection attempt fail at once (DNS and connect)."""
    import socket

    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def _loopback(host) -> bool:
        return host in ("127.0.0.1", "localhost", "::1")

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and not _loopback(address[0]):
            raise OSError(f"network disabled in tests ({address[0]})")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
