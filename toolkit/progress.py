"""Progress display shared by all stages: one rich live display, nested tasks; and where library output
goes. `tailor` is quiet by default (edge_tailor.cli): library warnings, library logging and stray prints go
to the run's log.txt instead of the terminal, which keeps the stage lines, errors, the kernel line and the
verdict; `tailor -v` leaves everything where the libraries put it."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)
_progress: Progress | None = None

_routed = False  # library output is kept off the terminal (`tailor` without -v), see library_output()
_log: IO[str] | None = None  # the current run's log.txt while run_log() holds it
_pending: list[str] = []  # routed output from before a run directory was opened: written to its log.txt
_PENDING_MAX = 2000
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def quiet() -> bool:
    """Set in worker processes (edge_tailor.parallel), whose parent shows the progress."""
    return bool(os.environ.get("EDGE_TAILOR_QUIET"))


def routed() -> bool:
    """Whether library output goes to the run's log.txt instead of the terminal (`tailor` without -v)."""
    return _routed


def hide_library_bars() -> bool:
    """A trainer's `disable_tqdm`: in worker processes (the parent shows one bar over the jobs), and while
    library output is routed (the stage line and the rich bars show progress; tqdm would draw into log.txt;
    the trainer's logged losses are printed there instead)."""
    return quiet() or _routed


def _enabled() -> bool:
    try:
        return console.file.isatty() and not quiet()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


@contextmanager
def live() -> Iterator[None]:
    """Wrap a whole run: stage loops below show as bars with step counts and time left."""
    global _progress
    if not _enabled() or _progress is not None:
        yield
        return
    # While output is routed, sys.stdout/sys.stderr are the log: rich must not reroute them to the terminal.
    _progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                         transient=True, redirect_stdout=not _routed, redirect_stderr=not _routed)
    with _progress:
        try:
            yield
        finally:
            _progress = None


PLAIN_EVERY_S = 60.0  # without a terminal (CI, nohup, a pipe), how often a stage loop prints where it is


def _plain_track(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    """Progress as a line a minute where no live bar can draw: a log read with `tail -f` still says how far
    a 30-minute stage is and what is left."""
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_S:
            last = now
            left = f", ~{(now - start) / done * (total - done):.0f} s left" if total else ""
            console.print(f"  {description}: {done}/{total or '?'} in {now - start:.0f} s{left}",
                          highlight=False, soft_wrap=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if _progress is None:
        if quiet() or _enabled():  # a worker (its parent reports) or a terminal outside live(): as before
            yield from items
        else:
            yield from _plain_track(items, description, total)
        return
    task = _progress.add_task(description, total=total)
    try:
        for item in items:
            yield item
            _progress.advance(task)
    finally:
        _progress.remove_task(task)


# ---------------------------------------------------------------------------------------------
# Library output: the terminal (-v) or the run's log.txt (default).


def _emit(text: str) -> None:
    text = text if text.endswith("\n") else text + "\n"
    if _log is not None:
        _log.write(text)
    elif len(_pending) < _PENDING_MAX:
        _pending.append(text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _emit(warnings.formatwarning(message, category, filename, lineno, line))


class _ToLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _emit(_FORMAT.format(record))
        except Exception:  # logging must never break a run
            self.handleError(record)


_TO_LOG = _ToLog()


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """Logger.callHandlers while routed: every logger's records (each library's own stderr handlers
    included, and those of loggers made later) go to the log instead; levels still apply."""
    _TO_LOG.handle(record)


@contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """Around one `tailor` command: unless ``verbose``, warnings (the warnings module) and python logging
    (transformers, torch, onnx, optimum, torchao, trl, ...) go to the run's log.txt while run_log() holds
    one, and are kept for it until then (dropped when no run directory opens, e.g. on bad input)."""
    global _routed
    if verbose or _routed:
        yield
        return
    saved = warnings.showwarning, logging.Logger.callHandlers
    warnings.showwarning, logging.Logger.callHandlers = _show_warning, _call_handlers
    _routed = True
    try:
        yield
    finally:
        _routed = False
        warnings.showwarning, logging.Logger.callHandlers = saved
        _pending.clear()


def _terminal(stream: IO[str]) -> tuple[IO[str], bool]:
    """A stream to where ``stream`` writes now, that stays there when file descriptors 1 and 2 are
    pointed at the log: ``stream`` itself unless it writes to fd 1 or 2 (then a duplicate; True)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return stream, False
    if fd not in (1, 2):
        return stream, False
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace"), True


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Hold the run's log (``path``, appended to) for the stages of one command. While library output is
    routed it also takes the stages' stdout and stderr: sys.stdout/sys.stderr (a trainer's printed loss
    dicts, tqdm bars) and file descriptors 1 and 2 (C++ libraries; worker processes and subprocesses inherit
    them); the console, and with it the stage lines and the rich bars, keeps the terminal."""
    global _log
    with open(path, "a", encoding="utf-8", buffering=1, errors="backslashreplace") as log:
        mode = "library warnings, logging and output" if _routed else \
            "not routed here (tailor -v, or called from Python): library output went to the terminal"
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {mode}\n")
        if not _routed or _log is not None:
            yield
            return
        log.writelines(_pending)
        _pending.clear()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        terminal, duplicated = _terminal(sys.stderr)
        saved_streams = sys.stdout, sys.stderr
        saved_fds: dict[int, int] = {}
        try:
            for fd in (1, 2):
                try:
                    saved_fds[fd] = os.dup(fd)
                except OSError:  # not open (a daemon): the Python-level routing below still holds
                    continue
                os.dup2(log.fileno(), fd)
            console.file = terminal
            sys.stdout = sys.stderr = log
            _log = log
            yield
        except BaseException:
            console.print(f"[dim]  library output of this run: {path}[/dim]")
            raise
        finally:
            _log = None
            log.flush()
            for fd, saved in saved_fds.items():
                os.dup2(saved, fd)
                os.close(saved)
            sys.stdout, sys.stderr = saved_streams
            console.file = None  # back to whatever sys.stderr is
            if duplicated:
                terminal.close()
