"""Shared test helpers: repository paths, a loopback-only static file server, a page-fault probe."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files from `directory`, without request logging on stderr."""

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve_directory(folder: Path, handler: type = QuietHandler) -> Iterator[str]:
    """Serve `folder` on http://127.0.0.1:<free port> (loopback only); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# A process's heap under a batch-like load: four 20 MiB blocks live at once, every page written, then freed;
# prints the minor page faults of 4 such steps after 3 to settle. 0 when freed memory is reused
# (tlpipe.allocator), ~82,000 with glibc's defaults, which trim the freed heap and fault it in anew.
# Driven through libc's malloc directly: torch's own small heap objects would make the defaults' trims chance.
FAULT_PROBE = """
import ctypes, resource

def fault_probe():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 20 << 20

    def step():
        blocks = [libc.malloc(size) for _ in range(4)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in reversed(blocks):
            libc.free(b)

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
