"""Starting, waiting for and stopping an `mlflow models serve` process (for bench/ and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import PipelineError


def serve_command(model_uri: str, port: int, host: str = "127.0.0.1", workers: int = 1) -> list[str]:
    """`mlflow models serve` of this interpreter's environment (--env-manager local) on host:port."""

    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port),
            "--workers", str(workers)]


def serve_env(tracking: str) -> dict[str, str]:
    """Environment for serve_command: the store holding the model, and this interpreter's bin/ first on
    PATH (mlflow starts `uvicorn` by name)."""
    import sys

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": path}


def wait_ready(base_url: str, proc: Any, timeout_s: float, path: str = "/ping") -> None:
    """Poll <base_url><path> until it answers 200; one error if the server exits or never answers."""
    import urllib.error

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"serving: the model server exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise PipelineError(f"serving: {base_url}{path} did not answer within {timeout_s:.0f} s")


def stop(proc: Any, grace_s: float = 20.0) -> None:
    """End a server started with start_new_session=True. Its uvicorn children get SIGTERM first, so the
    `mlflow models serve` parent reaps them and exits; then anything left in the process group is killed."""
    import signal

    if proc.poll() is None:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = [int(x) for x in kids.read_text().split()] if kids.is_file() else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace_s)
