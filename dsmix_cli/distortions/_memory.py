"""Process-wide allocator setting for long distortion runs.

A distorted 512x384 RGB image is a 2.4 MB float32 buffer, and a distortion allocates a few of
them. glibc's allocator gives memory that large back to the system when it is freed and takes
it again on the next allocation, paying a page fault per 4 KiB page each time (about 0.2 ms per
image, a tenth of the cheap types' cost). `keep_freed_memory` raises glibc's thresholds so freed
buffers stay in the process for reuse; the process's memory then stays at its peak, which is
what a long `dsmix synthesize` run wants. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DONE = {"value": None}


def keep_freed_memory(threshold: int = 256 * 2**20) -> bool:
    """Ask glibc to keep freed blocks up to `threshold` bytes for reuse. True when it applied."""
    if _DONE["value"] is not None:
        return _DONE["value"]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
        except (OSError, AttributeError):
            ok = False
    _DONE["value"] = ok
    return ok
