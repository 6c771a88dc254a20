"""Giving freed memory back to the operating system between the stages of a long request.

glibc keeps the heap that large numpy/torch temporaries leave behind (a diarization block, a batch of
decoded windows) instead of returning it, so a process's RSS climbs to the sum of its stages' peaks
and stays there. ``malloc_trim(0)`` returns those pages at once (milliseconds). Elsewhere (musl,
macOS, Windows) there is no such call and nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory(collect_cycles: bool = True) -> None:
    """Free what only reference cycles still hold (pyannote's pipeline outputs keep their arrays
    in cycles; a collection costs a fraction of a second, so callers in tight loops skip it), then
    return the heap's free pages to the OS (glibc; elsewhere only the former)."""
    if collect_cycles:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
