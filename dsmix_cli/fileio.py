"""Atomic file writes: every output of the tool goes through here.

A file is written under a temporary name in its destination folder, `.<name>.<8 random
characters>.tmp`, and renamed into place only once complete, so a killed run never leaves a
half-written output behind (and a resumable stage can trust that any file it finds is whole).
A write that fails (a full disk, a folder removed meanwhile) raises `OutputError` naming the
file, after removing its temporary: the destination keeps its previous content, if any.
A `kill -9` can still leave a temporary behind; `remove_stale_temporaries` removes those of a
folder, recognised by that naming.

`check_output_file` and `check_output_dir` check, before any work, that an output can be
written where the user asked (not a folder in place of a file, not a file in place of a folder,
a folder this process may write into), so a long run does not fail only at its end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from dsmix_cli.errors import DsmixError, OutputError
from dsmix_cli.paths import path_text

_SURROGATES = re.compile("[\ud800-\udfff]")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files as 0600; outputs should get the usual permissions (0666 minus umask),
# so a generated dataset can be shared like any file the user writes.
_FILE_MODE = 0o666 & ~_current_umask()


TEMP_SUFFIX = ".tmp"
# `.<name>.<random>.tmp`: the random part is what tempfile.mkstemp draws (8 of a-z, 0-9, _)
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _write_failed(path: Path, exc: OSError, existed: bool) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    kept = "its previous content is unchanged" if existed else "nothing was written under this name"
    return OutputError(f"cannot write ({reason}); {kept}", path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit rename it to `path`.

    Args:
        path: the destination file.
        mode: "wb" or "w" (text, UTF-8).

    Raises:
        OutputError: the folder cannot be made or the file cannot be written (full disk,
            permissions, ...); the temporary is removed and `path` is left as it was.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _write_failed(path, exc, existed) from None
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
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_failed(path, exc, existed) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_temporary(name: str) -> bool:
    """True for the name of an `atomic_open` temporary (`.<name>.<random>.tmp`)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the `atomic_open` temporaries a killed process left in `folder` (not below it).

    Only names of that exact form are touched. Call it where one process owns the folder
    (a training run's folder, a maps folder), before that process writes there.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path, what: str, target: Path) -> None:
    """Create and remove a temporary file in `folder`, or raise naming the option and the target."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dsmix-write-check.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise DsmixError(f"{what}: cannot write into {folder} ({exc.strerror or exc})", target) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_output_file(path: str | Path | None, what: str, extensions: tuple[str, ...] | None = None) -> None:
    """Check before any work that the file `path` can be written (`-` and None pass).

    Args:
        path: the output file.
        what: the option, for the message (e.g. `--csv`).
        extensions: the allowed suffixes (lower case, with the dot), if the format comes from it.

    Raises:
        DsmixError (exit 2): `path` is a folder, lies under a file, has an unknown extension, or
            its folder cannot be written.
    """
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise DsmixError(f"{what} names a folder; give a file name", path)
    if extensions is not None and path.suffix.lower() not in extensions:
        raise DsmixError(f"{what}: unknown extension {path.suffix!r}; use one of {', '.join(extensions)}", path)
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise DsmixError(f"{what}: cannot create it, {base} is a file, not a folder", path)
    _probe_write(base, what, path)


def check_output_dir(path: str | Path | None, what: str) -> None:
    """Check before any work that the folder `path` exists and can be written into, or can be
    made (None passes).

    Raises:
        DsmixError (exit 2): `path` is a file, lies under a file, or cannot be written.
    """
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DsmixError(f"{what} names a file; give a folder", path)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise DsmixError(f"{what}: cannot create it, {base} is a file, not a folder", path)
    _probe_write(base, what, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return path_text(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """Replace NaN/inf by None and escape undecodable name bytes (`paths.path_text`), so the
    JSON is strict (readable by any parser, no lone surrogates)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str) and _SURROGATES.search(obj):
        return path_text(obj)
    if isinstance(obj, dict):
        return {_clean_floats(k): _clean_floats(v) for k, v in obj.items()}
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
        write_stdout(text)
        return
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_stdout(text: str) -> None:
    """Write text to stdout as UTF-8 (a closed pipe, e.g. `| head`, is not an error)."""
    import sys

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # let the interpreter exit quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a .npy file atomically."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)
