"""Shared test helpers: repository paths and a loopback-only static file server."""

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
