"""Keep big message buffers out of the malloc heaps, so a long sync's memory stays flat.

glibc serves blocks of 128 KiB and more with mmap, but raises that threshold to the size of
each such block freed (up to 32 MiB). After the first large attachment, message bodies of up
to megabytes come from the heaps of the threads that fetch and write them; they fragment
those heaps, which keep their high-water mark. Fixing the threshold (which also turns the
raising off) returns every large body to the kernel when it is freed. Measured on an initial
sync of the benchmark corpus: peak RSS 76 -> 63 MB at 5,000 messages, 84 -> 70 MB at 20,000.
The price is paid in page faults: every big buffer is fresh memory the kernel zero-fills
(1.0 M minor faults instead of 0.12 M for those 1.5 GB, ~4 s more system CPU of ~30 s). It
is paid once, by a big first sync; a daemon that runs for weeks keeps the smaller heaps.
Limiting the number of arenas instead (MALLOC_ARENA_MAX=2) added few faults but saved only
6 MB at 20,000 messages.

Called where message bodies start to flow (the engine, POP3, the daemon); not on start-up,
where importing ctypes would cost a no-change sync time for nothing.
"""

from __future__ import annotations

import sys

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_THRESHOLD = 128 * 1024  # glibc's default before any raising
_done = False


def release_free_memory() -> None:
    """Give the heaps' free pages back to the kernel (glibc's malloc_trim): after a sync, a
    daemon's many threads leave free space in their heaps that would count as RSS until the
    next sync reuses it (issue 21: one daemon, twenty accounts). A no-op off glibc."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)


def keep_large_blocks_mapped() -> None:
    """Fix glibc's mmap threshold; a no-op elsewhere (macOS, musl) and after the first call."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
