"""Memory the process has freed, given back to the operating system.

glibc keeps freed heap memory for reuse, in one arena per thread that allocated it: after
reading a large store a page at a time in executor threads (deeplake's chunks, the pages'
float32 copies), the service held 2.4 GB with a search budget of 512 MB. `malloc_trim`
returns what is free in every arena. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> None:
    """Gives the heap's free memory back to the system (blocking: milliseconds)."""
    trim = _trim()
    if trim is not None:
        trim(0)
