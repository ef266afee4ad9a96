"""Process-wide settings for per-frame work: glibc's allocator and OpenCV's threads.

* By default glibc's ``malloc`` serves every array above a threshold that adapts up to 32 MiB
  with a fresh ``mmap`` and hands it back to the kernel when freed, so each frame's temporary
  arrays (masks, distance maps, 6 MB RGB frames) are faulted in page by page again: about
  1,000 minor page faults and twice the CPU time of the cue geometry on a 1080p frame. Our
  processes keep such memory in the heap instead, and in one heap: a thread's own arena
  (glibc makes one per thread, up to 8 per core) grows in 64 MiB heaps that are unmapped
  once empty, so frames decoded in one thread and freed in another, 100 of them in flight,
  were faulted in anew all the same (750 page faults per 1080p frame in the decode thread,
  3.5 of 20 core-ms per frame in the kernel; 1.5 with one arena).
* OpenCV splits some calls over a pool of one thread per core, whose threads wait by spinning.
  Our parallelism is explicit (stage workers, worker processes, torch threads, data-loading
  processes), so that pool only adds CPU time: on 2 cores it doubled the core-milliseconds
  of the cue geometry (3.0 to 6.6 ms per 1080p frame). Our processes run OpenCV on the
  calling thread.

These are choices made by the commands (``surgseg.apps.launch``) and our worker processes,
not by the library on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 32 << 20  # bytes: glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20  # bytes of free heap kept before any is handed back
ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": "1",
    "OPENCV_FOR_THREADS_NUM": "1",
}
"""The same settings for a child process's environment (other C libraries ignore them)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Set this process's glibc ``malloc`` to keep large freed blocks, in one arena for every
    thread (call it before starting threads); False where there is no glibc (nothing
    changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(_M_ARENA_MAX, 1))  # fmt: skip


def tune_process() -> None:
    """Both settings for this process: large freed blocks kept, OpenCV on the calling thread."""
    import cv2  # here: the commands' --help does not wait for it

    keep_freed_memory()
    cv2.setNumThreads(1)
