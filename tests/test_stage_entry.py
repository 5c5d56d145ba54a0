"""stage.entry: the exit status a caller (DVC, a shell) sees, the last words printed, and atexit handlers that
run before the process leaves without the interpreter's teardown."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    """A stage-like script whose late atexit handlers (as MLflow registers one on import) write a file and
print without a newline."""
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        import argparse, atexit, sys
        sys.path.insert(0, {str(SRC)!r})
        from tlpipe.errors import PipelineError
        from tlpipe.stage import entry

        def main():
            atexit.register(lambda: open({str(tmp_path / "late.txt")!r}, "w").write("ran"))
            atexit.register(lambda: sys.stdout.write("; said at exit"))  # after Python's own last flush
            args = argparse.ArgumentParser().parse_args()
            sys.stdout.write("partial line")
        {textwrap.indent(textwrap.dedent(body), "    ")}

        entry(main)
    """), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as under DVC
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("body, status, err", [
    ("", 0, ""),
    ("raise PipelineError('params.yaml: train.lr must be > 0')", 2, "error: params.yaml: train.lr must be > 0\n"),
    ("raise KeyboardInterrupt", 130, "error: interrupted\n"),
    ("raise SystemExit(3)", 3, ""),
    ("raise SystemExit('bye')", 1, "bye\n"),
])
def test_status_output_and_late_atexit_handlers(tmp_path, body, status, err):
    res = _run(tmp_path, body)
    assert res.returncode == status
    assert res.stdout == "partial line; said at exit"  # flushed on the way out
    assert res.stderr == err
    assert (tmp_path / "late.txt").read_text() == "ran"  # MLflow-like handlers still run


def test_uncaught_exception_exits_1_with_its_traceback(tmp_path):
    res = _run(tmp_path, "raise RuntimeError('unexpected')")
    assert res.returncode == 1
    assert "RuntimeError: unexpected" in res.stderr
    assert (tmp_path / "late.txt").read_text() == "ran"


def test_argparse_errors_keep_their_status(tmp_path):
    res = _run(tmp_path, "", "--no-such-flag")
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stderr


# A process's heap under a batch-like load: four 20 MiB blocks live at once, every page written, then freed;
# prints the minor page faults of 4 such steps after 3 to settle. 0 when freed memory is reused
# (tlpipe.allocator), ~82,000 with glibc's defaults, which trim the freed heap and fault it in anew.
# Driven through libc's malloc directly: torch's own small heap objects would make the defaults' trims chance.
_FAULTS = """
import ctypes, resource, sys
sys.path.insert(0, {src!r})
from tlpipe.stage import entry

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

entry(fault_probe)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_stage_process_reuses_freed_memory_unless_the_user_tunes_malloc(tmp_path):
    """Blocks a stage frees are reused without fresh page faults (with glibc's defaults the freed 80 MiB are
    trimmed and each step faults them in anew, ~20,000 pages); a user's own malloc tuning is left alone."""
    script = tmp_path / "faults.py"
    script.write_text(_FAULTS.format(src=str(SRC)), encoding="utf-8")

    def faults(**env: str) -> int:
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert res.returncode == 0, res.stderr
        return int(res.stdout.split()[-1])

    assert faults() < 2000
    assert faults(GLIBC_TUNABLES="glibc.malloc.perturb=0") > 40000  # glibc's defaults: the pages come back fresh
