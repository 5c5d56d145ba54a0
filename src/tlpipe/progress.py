"""Progress display: tqdm bars on a terminal; in logs (stderr not a TTY) no bars, one line when a task ends."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", leave: bool = True,
        summary: bool = True) -> Iterator[T]:
    """Iterate `items` with a tqdm bar on a terminal; otherwise print `desc: N unit in S s` once at the end
    (when `summary`), so CI logs get one line per task instead of carriage-return noise."""
    if interactive():
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=leave, mininterval=0.5)
        return
    t0, n = time.perf_counter(), 0
    for item in items:
        n += 1
        yield item
    if summary:
        print(f"{desc}: {n} {unit} in {time.perf_counter() - t0:.1f} s", flush=True)


WIDTH = 120  # columns a stage's closing line is wrapped to (the terminal width the README's output fits)


def say(text: str) -> None:
    """Print a stage's closing line wrapped to WIDTH columns (continuations indented), flushed: its results and
    where they went, readable in a 120-column terminal."""
    import textwrap

    print(textwrap.fill(text, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False),
          flush=True)
