"""Entry-point helper for stage scripts: one-line errors, non-zero exit, no traceback wall."""

from __future__ import annotations

import sys
from typing import Callable

from .atomic import clean_stale_tree
from .errors import PipelineError


def entry(main: Callable[[], None]) -> None:
    """Run a stage's main(); print a PipelineError on one line and exit with status 2. First remove what
    killed runs left half-written (temporaries of dead processes; see atomic.clean_stale_tree)."""
    try:
        clean_stale_tree()
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
