"""The project's exceptions.

`DsmixError` and its subclasses are user-facing: the CLI turns them into one clear line on
stderr and an exit code (2 for bad usage or input detected before work starts, 1 for a failure
during the work), never a traceback. Everything else is a bug and keeps its traceback.

An error raised in a data-loading worker process reaches the main process as a new exception of
the same class whose text is the worker's whole traceback (that is how PyTorch's DataLoader
passes it on). `DsmixError` recognises that text and keeps only the original one-line message;
the worker's traceback stays available as `worker_traceback` (shown with `--verbose`).
"""

from __future__ import annotations

import re
from pathlib import Path

from dsmix_cli.paths import path_text

_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.DOTALL)


def _from_worker(cls: type, message: str) -> tuple[str, str | None]:
    """(the original message, the worker traceback) of a DataLoader worker's re-raised error."""
    if not isinstance(message, str) or not _WORKER.match(message):
        return message, None
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    if at < 0:
        return message, None
    return message[at + len(marker):].strip(), message


class DsmixError(Exception):
    """A problem the user can fix: bad input, a missing file, an incompatible checkpoint.

    Args:
        message: what is wrong and, where possible, what to do about it.
        path: the file or folder concerned; it is named in the message (in `paths.path_text`
            form, so a name that is not valid UTF-8 prints).
        exit_code: the process exit code the CLI uses (2: bad usage or input).
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, exit_code: int | None = None):
        message, self.worker_traceback = _from_worker(type(self), message)
        self.reason = message
        self.path = Path(path) if path is not None else None
        if exit_code is not None:
            self.exit_code = exit_code
        full = f"{path_text(self.path)}: {message}" if self.path is not None else message
        super().__init__(full)

    def __reduce__(self):
        # pickled with its parts, so the path and exit code survive a trip between processes
        return (_rebuild, (type(self), self.reason, self.path, self.exit_code))


def _rebuild(cls: type, reason: str, path: Path | None, exit_code: int) -> DsmixError:
    return cls(reason, path, exit_code)


class ImageReadError(DsmixError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image, too large)."""


class DatasetError(DsmixError):
    """A dataset folder that does not match its expected layout, or misses files."""


class CheckpointError(DsmixError):
    """A checkpoint or run folder that cannot be loaded (missing, wrong kind or version, bad keys)."""


class TrainingError(DsmixError):
    """A training run that had to stop, e.g. on a non-finite loss; exit code 1."""

    exit_code = 1


class InputFailedError(DsmixError):
    """An input that could not be read once the work had started (an image found undecodable in
    the middle of a training run); exit code 1: the run stopped, what it wrote is whole."""

    exit_code = 1


class OutputError(DsmixError):
    """An output that could not be written during the work (a full disk, a vanished folder);
    exit code 1. Nothing is left half-written under the output's name."""

    exit_code = 1
