"""Errors that the CLI turns into a one-line message and exit code 2 (bad input)."""

from __future__ import annotations


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


class ArtifactError(InputError):
    """A corrupted, tampered or missing artifact (hash mismatch, missing file)."""
