"""Atomic file writes: every output of the tool goes through here.

A file is written under a temporary name in its destination folder and renamed into place only
once complete, so a killed run never leaves a half-written output behind (and a resumable
stage can trust that any file it finds is whole).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files as 0600; outputs should get the usual permissions (0666 minus umask),
# so a generated dataset can be shared like any file the user writes.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit rename it to `path`.

    Args:
        path: the destination file.
        mode: "wb" or "w" (text, UTF-8).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        if "b" in mode:
            fh = os.fdopen(fd, mode)
        else:
            fh = os.fdopen(fd, mode, encoding="utf-8", newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """Replace NaN/inf by None so the JSON is strict (readable by any parser)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text (NaN becomes null), indented, with a trailing newline."""
    return json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_json_default))), indent=2) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON atomically; `-` writes to stdout."""
    text = to_json(obj)
    if str(path) == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a .npy file atomically."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)
