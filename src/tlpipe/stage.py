"""Entry-point helper for stage scripts: one-line errors, non-zero exit, no traceback wall, no slow teardown,
freed memory kept for reuse."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Callable

from .allocator import keep_freed_memory
from .atomic import clean_stale_tree
from .errors import PipelineError

_status = 1  # the exit status once the atexit handlers have run: 1 (an uncaught exception) until entry() knows


def _skip_teardown() -> None:
    """The last atexit handler (registered before MLflow, torch and the rest are imported, so theirs run first:
    MLflow ends its runs, queued logging drains): flush and leave with the status entry() recorded, skipping
    the interpreter's module teardown, which frees torch, MLflow and SQLAlchemy object by object and
    cost 0.6-2 s per stage process here. Every output is written and closed before this point."""
    logging.shutdown()  # registered with atexit before this handler when `logging` was imported first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to say
            pass
    os._exit(_status)


def _code(exc: SystemExit) -> int:
    """The status Python itself gives a SystemExit: None -> 0, an int as is, anything else (a message) -> 1."""
    return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1


def entry(main: Callable[[], None], fast_exit: bool = True) -> None:
    """Run a stage's main(); print a PipelineError on one line and exit with status 2. First remove what
    killed runs left half-written (temporaries of dead processes; see atomic.clean_stale_tree).
    `fast_exit`: leave through `_skip_teardown` once the atexit handlers have run, and keep freed memory for
    reuse (`keep_freed_memory`): for a script's own process only, never one that goes on, such as a test runner."""
    global _status
    if fast_exit:
        atexit.register(_skip_teardown)
        keep_freed_memory()
    try:
        clean_stale_tree()
        main()
        _status = 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _status = 2
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _status = 130
        sys.exit(130)
    except SystemExit as exc:  # argparse, --help, a relaunch under torchrun
        _status = _code(exc)
        raise
