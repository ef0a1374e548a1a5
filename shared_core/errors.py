"""Errors that name the file and the problem, so a batch can report them and go on."""

from __future__ import annotations

from pathlib import Path


class UnlearnableError(Exception):
    """Base class: every error the core raises on purpose derives from it."""


class InputFileError(UnlearnableError, ValueError):
    """A file given by the user cannot be used; says which file and why."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SettingsError(UnlearnableError, ValueError):
    """An option or combination of options that cannot work, with the fix."""


class ProtectionError(UnlearnableError, RuntimeError):
    """Optimisation failed (non-finite loss, no gradient, a perturbation that never moved): never reported as protected."""
