"""Progress display shared by all stages: one rich live display, nested tasks."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

T = TypeVar("T")
console = Console(stderr=True)
_progress: Progress | None = None


def quiet() -> bool:
    """Set in worker processes (edge_tailor.parallel), whose parent shows the progress."""
    return bool(os.environ.get("EDGE_TAILOR_QUIET"))


def _enabled() -> bool:
    return sys.stderr.isatty() and not quiet()


@contextmanager
def live() -> Iterator[None]:
    """Wrap a whole run: stage loops below show as bars with step counts and time left."""
    global _progress
    if not _enabled() or _progress is not None:
        yield
        return
    _progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                         transient=True)
    with _progress:
        try:
            yield
        finally:
            _progress = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if _progress is None:
        yield from items
        return
    task = _progress.add_task(description, total=total)
    try:
        for item in items:
            yield item
            _progress.advance(task)
    finally:
        _progress.remove_task(task)
