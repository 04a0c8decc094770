"""Errors that the CLI turns into a one-line message and an exit code.

Exit codes: 0 success, 1 a budget or check failed, 2 bad input (:class:`InputError`),
3 environment failure (:class:`EnvironmentFailure` and any ``OSError``: disk full, read-only or
unwritable folder, permission denied, another run holding the run directory's lock).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a budget or check failed
EXIT_BAD_INPUT = 2  # config, target, data, model, run directory
EXIT_ENVIRONMENT = 3  # disk full, read-only folder, permission denied, run directory locked


class InputError(ValueError):
    """Bad user input: a config, target, dataset, model folder or artifact.

    The message always names the file and the field or line, so the CLI can print it alone.
    """

    def __init__(self, source: object, where: str | None, problem: str):
        self.source = str(source)
        self.where = where
        self.problem = problem
        location = f"{self.source}: {where}" if where else self.source
        super().__init__(f"{location}: {problem}")

    def __reduce__(self):  # raised in a worker process (parallel.run_jobs), it must cross back intact
        return type(self), (self.source, self.where, self.problem)


class ArtifactError(InputError):
    """A corrupted, tampered or missing artifact (hash mismatch, missing file)."""


class EnvironmentFailure(Exception):
    """The machine, not the input, stopped the run (exit 3): e.g. the run directory is locked."""

    def __init__(self, source: object, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self):
        return type(self), (self.source, self.problem)


class RunLocked(EnvironmentFailure):
    """Another tailor process holds ``<run>/.lock``."""
