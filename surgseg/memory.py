"""glibc's allocator set for per-frame work.

By default glibc's ``malloc`` serves every array above a threshold that adapts up to 32 MiB
with a fresh ``mmap`` and hands it back to the kernel when freed, so each frame's temporary
arrays (masks, distance maps, 6 MB RGB frames) are faulted in page by page again: about 1,000
minor page faults and twice the CPU time of the cue geometry on a 1080p frame. Our commands
keep such memory in the heap instead. This is a process-wide choice, made by the commands
(``surgseg.apps.launch``) and the worker processes, not by the library on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 32 << 20  # bytes: glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20  # bytes of free heap kept before any is handed back
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
"""The same settings for a child process's environment (other C libraries ignore them)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Set this process's glibc ``malloc`` to keep large freed blocks; False where there is no
    glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))  # fmt: skip
