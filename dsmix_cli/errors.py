"""The project's exceptions.

`DsmixError` and its subclasses are user-facing: the CLI turns them into one clear line on
stderr and an exit code (2 for bad usage or input detected before work starts), never a
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DsmixError(Exception):
    """A problem the user can fix: bad input, a missing file, an incompatible checkpoint.

    Args:
        message: what is wrong and, where possible, what to do about it.
        path: the file or folder concerned; it is named in the message.
        exit_code: the process exit code the CLI uses (2: bad usage or input).
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, exit_code: int | None = None):
        self.path = Path(path) if path is not None else None
        if exit_code is not None:
            self.exit_code = exit_code
        full = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(full)


class ImageReadError(DsmixError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image)."""


class DatasetError(DsmixError):
    """A dataset folder that does not match its expected layout, or misses files."""


class CheckpointError(DsmixError):
    """A checkpoint or run folder that cannot be loaded (missing, wrong kind or version, bad keys)."""


class TrainingError(DsmixError):
    """A training run that had to stop, e.g. on a non-finite loss; exit code 1."""

    exit_code = 1
