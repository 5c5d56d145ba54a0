"""The one exception type users see: a short message naming the file or key at fault."""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing error; stage entry points print it on one line and exit with status 2."""
