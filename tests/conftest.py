"""Shared fixtures for the unit tests: src/ on sys.path, a loopback HTTP server, the tiny GTSRB archive."""

from __future__ import annotations

import functools
import hashlib
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from _support import REPO, SHARED, QuietHandler, serve_directory

SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

TINY_ZIP = SHARED / "datasets" / "gtsrb" / "tiny" / "GTSRB_tiny.zip"
TINY_SHA256 = "f7793ad7148e710a5a023ad812bcfd17b1c4fd7e020e70664480ff3dbcb44e43"
TINY_CLASSES = ("1", "12", "13", "14", "17", "25", "38")


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


@pytest.fixture
def http_server():
    """Factory: http_server(directory, handler=QuietHandler) -> 'http://127.0.0.1:<port>'.

    Loopback only, a free port; every server started is shut down at teardown."""
    with ExitStack() as stack:
        yield lambda directory, handler=QuietHandler: stack.enter_context(serve_directory(Path(directory), handler))


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


# the longest files first, so that two xdist workers (pytest.ini: --dist loadfile, no reorder) end together;
# the rest keep their order
LONGEST_FIRST = ("test_interrupt.py", "test_remote_s3.py", "test_mlflow_server.py", "test_e2e.py", "test_queue.py",
                 "test_exp_run.py", "test_presets_e2e.py", "test_distributed.py", "test_mlflow_ui.py",
                 "test_serving.py")  # measured: 750, 700, ~600, ~650, 555 s, ...


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
