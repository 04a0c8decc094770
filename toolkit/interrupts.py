"""Ctrl-C and SIGTERM as one exception, so a command unwinds like any failure: the stage it stopped in
is removed and marked interrupted, worker processes are ended, and the CLI prints one line.

SIGTERM's default action kills the process on the spot (no cleanup, an empty stage folder left), so
both signals raise :class:`Interrupted` instead; once one has arrived, further ones are ignored so
the cleanup itself is not cut short (SIGKILL still ends everything, and the next run redoes the stage).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal ended the command; ``stage`` is the stage it stopped (None: outside any stage)."""

    def __init__(self, signum: int = signal.SIGINT, stage: str | None = None):
        self.signum = int(signum)
        self.stage = stage
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @classmethod
    def from_exception(cls, exc: KeyboardInterrupt, stage: str | None) -> Interrupted:
        """``exc`` (a plain KeyboardInterrupt is a SIGINT) as an Interrupted that names ``stage``."""
        if isinstance(exc, Interrupted):
            return cls(exc.signum, exc.stage or stage)
        return cls(signal.SIGINT, stage)


def _raise(signum: int, _frame) -> None:
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (called from any
    other thread, where Python cannot install handlers, it changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_interrupts() -> None:
    """For worker processes: a Ctrl-C reaches the whole process group, and the parent ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
