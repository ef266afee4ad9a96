"""Cue geometry in worker processes: ``find_instruments`` on masks passed through shared memory.

``find_instruments`` holds the GIL for about half of its CPU time (the Python between its
OpenCV and NumPy calls; ``scripts/bench_cue_workers.py`` measures it), so threads running it
do not scale with cores; processes do. A ``CuePool`` keeps worker processes
(``python -m surgseg.cue_workers``, one OpenCV thread each), started once and shared by every
pipeline of the process:

* the pool has a ``SharedArena``, shared memory (an anonymous ``memfd`` on Linux, else an
  unlinked temporary file) that every worker maps once: masks and confidence maps allocated
  there (the segment stage writes its results there when the locate stage has worker
  processes) reach the workers without a copy, by their offset;
* any other array is copied into the worker's own shared buffer (NumPy copies without
  holding the GIL), not pickled;
* the request (offsets, shapes, the task and the cue options) and the answer (the
  ``Instrument``s) are small pickles over a socket pair;
* a video's field of view is sent to a worker the first time that worker sees the video.

The results are exactly those of ``find_instruments`` in the calling process. Workers ignore
Ctrl-C (the caller decides when to stop), exit when their socket closes (the parent ended),
and are shut down at interpreter exit. Unix only (a file descriptor passes over the socket).
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import mmap
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surgseg import tuning

if TYPE_CHECKING:
    from surgseg.cues import FieldOfView, Instrument

_LENGTH = struct.Struct("<Q")  # each message: its length, then a pickle
_ALIGN = 64  # bytes: where each array starts in a worker's buffer
_VIEWS_KEPT = 4  # fields of view a worker keeps (videos processed at once)
_EXIT_WAIT_S = 5.0
_CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context, whichever device asks
ARENA_BYTES = 256 << 20  # address space of the pool's arena: pages hold memory once written


def _send(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the other end of the socket closed")
        got += k
    return data


def _recv(sock: socket.socket) -> Any:
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return pickle.loads(_recv_exact(sock, length))


def _shared_file(size: int) -> int:
    """A file descriptor of ``size`` bytes of memory that another process can map."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("surgseg-cues")
    else:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryFile(dir=folder) as f:  # unlinked at once: nothing can leak
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _array(buffers: dict[str, mmap.mmap | None],
           where: tuple[str, int, tuple[int, ...], str]) -> np.ndarray:  # fmt: skip
    """The array at ``where`` (which buffer, offset, shape, dtype)."""
    name, offset, shape, dtype = where
    return np.ndarray(shape, np.dtype(dtype), buffer=buffers[name], offset=offset)


class SharedArena:
    """Shared memory that every cue worker maps once: an array allocated here reaches them by
    its offset, without a copy.

    ``empty`` hands out uint8 arrays; a slot goes back to the arena when the last array or
    tensor viewing it is gone. When the arena is full, ``empty`` returns None (the caller then
    allocates as usual, and the array is copied to the worker). Pages of memory are taken
    when first written and kept for reuse.
    """

    def __init__(self, size: int = ARENA_BYTES):
        self.size = size
        self.fd = _shared_file(size)
        self._map = mmap.mmap(self.fd, size)
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, bytes), by offset
        self._returned: deque[tuple[int, int]] = deque()  # slots given back, to join the free
        self._lock = threading.Lock()
        self._pinned: bool | None = None
        self.misses = 0  # requests the arena could not serve

    def empty(self, shape: Sequence[int], *, pinned: bool = False) -> np.ndarray | None:
        """A uint8 array of ``shape`` in the arena, or None if it has no room (or, with
        ``pinned``, if its memory cannot be page-locked for CUDA copies)."""
        nbytes = max(-(-int(np.prod(shape)) // _ALIGN) * _ALIGN, _ALIGN)
        if pinned and not self._pin():
            return None
        with self._lock:
            while self._returned:
                self._join(*self._returned.popleft())
            i = next((i for i, (_, n) in enumerate(self._free) if n >= nbytes), None)
            if i is None:
                self.misses += 1
                return None
            offset, n = self._free[i]
            if n == nbytes:
                del self._free[i]
            else:
                self._free[i] = (offset + nbytes, n - nbytes)
        array = np.ndarray(tuple(shape), np.uint8, buffer=self._map, offset=offset)
        weakref.finalize(array, self._release, offset, nbytes)  # its views keep it alive
        return array

    def offset(self, array: np.ndarray) -> int | None:
        """Where ``array`` starts in the arena, if it lies there whole and contiguous."""
        if not array.flags.c_contiguous:
            return None
        start = array.__array_interface__["data"][0] - self._address
        return start if start >= 0 and start + array.nbytes <= self.size else None

    def _release(self, offset: int, nbytes: int) -> None:
        # called by the garbage collector, maybe inside ``empty``: no lock taken here
        self._returned.append((offset, nbytes))

    def _join(self, offset: int, nbytes: int) -> None:
        """Put a slot back in the free list (under the lock), joined to free neighbours."""
        i = bisect.bisect(self._free, (offset, 0))
        if i < len(self._free) and self._free[i][0] == offset + nbytes:  # the next one
            nbytes += self._free.pop(i)[1]
        if i > 0 and sum(self._free[i - 1]) == offset:  # the one before
            offset, before = self._free.pop(i - 1)
            nbytes += before
            i -= 1
        self._free.insert(i, (offset, nbytes))

    def _pin(self) -> bool:
        """Page-lock the whole arena for CUDA (once), so that copies from the device into it
        run asynchronously; False if CUDA refuses."""
        with self._lock:
            if self._pinned is None:
                import torch

                status: list[int] = []
                # in a thread of its own: a refusal leaves CUDA's last error set in the thread
                # that asked, where torch's next kernel launch check would raise it
                register = torch.cuda.cudart().cudaHostRegister
                asking = threading.Thread(target=lambda: status.append(int(register(
                    self._address, self.size, _CUDA_HOST_REGISTER_PORTABLE))))  # fmt: skip
                asking.start()
                asking.join()
                self._pinned = status == [0]
            return self._pinned


class WorkerError(RuntimeError):
    """A cue worker process ended or stopped answering."""


class _Worker:
    """One worker process, its socket and its shared buffer (used by one thread at a time)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this surgseg, wherever it is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.update(tuning.ENV)  # surgseg.tuning: heap kept, OpenCV on one thread
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "surgseg.cue_workers", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env=env)  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.buffer: mmap.mmap | None = None
        self.has_arena = False
        self.broken = False
        self.ready = False

    def wait_ready(self) -> None:
        """Wait for the worker to have imported what it needs (about a second)."""
        if not self.ready:
            _recv(self.sock)  # ("ready",)
            self.ready = True

    def _reserve(self, nbytes: int) -> None:
        """A buffer of at least ``nbytes``, shared with the worker."""
        if self.buffer is not None and len(self.buffer) >= nbytes:
            return
        size = max(nbytes, 2 * len(self.buffer) if self.buffer is not None else 0)
        fd = _shared_file(size)
        try:
            buffer = mmap.mmap(fd, size)
            _send(self.sock, ("buffer", size))
            socket.send_fds(self.sock, [b"F"], [fd])
        finally:
            os.close(fd)
        self.buffer = buffer  # the old one is unmapped once nothing refers to it

    def _share_arena(self, arena: SharedArena) -> None:
        if not self.has_arena:
            _send(self.sock, ("arena", arena.size))
            socket.send_fds(self.sock, [b"F"], [arena.fd])
            self.has_arena = True

    def locate(self, arrays: Sequence[tuple[np.ndarray, np.ndarray | None]], *, view_key: int,
               view: FieldOfView, task: str, params: dict[str, Any],
               arena: SharedArena) -> tuple[list[list[Instrument]], float]:  # fmt: skip
        """``find_instruments`` of each (mask, confidence) in the worker: the instruments and
        the worker's CPU seconds. Arrays in ``arena`` are passed by offset; the others are
        copied into the worker's buffer."""
        self.wait_ready()
        frames, copies, offset = [], [], 0
        for pair in arrays:
            frame = []
            for a in pair:
                if a is None:
                    frame.append(None)
                elif (shared := arena.offset(a)) is not None:
                    self._share_arena(arena)
                    frame.append(("arena", shared, a.shape, a.dtype.str))
                else:
                    frame.append(("buffer", offset, a.shape, a.dtype.str))
                    copies.append((a, frame[-1]))
                    offset += -(-a.nbytes // _ALIGN) * _ALIGN
            frames.append(tuple(frame))
        if copies:
            self._reserve(offset)
            for a, where in copies:
                np.copyto(_array({"buffer": self.buffer}, where), a)  # without the GIL
        request = ("locate", view_key, task, params, frames)
        _send(self.sock, request)
        kind, payload, cpu = _recv(self.sock)
        if kind == "need_view":
            _send(self.sock, ("view", view_key, view.mask, view.shape))
            _send(self.sock, request)
            kind, payload, more = _recv(self.sock)
            cpu += more
        if kind == "error":
            raise payload
        return payload, cpu

    def close(self) -> None:
        """Close the socket (the worker then exits) and wait for the process."""
        self.sock.close()
        try:
            self.process.wait(timeout=_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CuePool:
    """Worker processes running ``find_instruments``; each call takes a free worker (waiting
    for one if every worker is busy), so ``n`` calling threads need ``n`` workers.

    ``arena`` is the shared memory every worker maps: arrays allocated there are not copied.
    ``cpu_s`` is the CPU time the workers spent on requests, for the benchmarks.
    """

    def __init__(self) -> None:
        self.arena = SharedArena()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.cpu_s = 0.0

    def reserve(self, n: int) -> None:
        """Start workers until there are at least ``n``, and wait until they are ready (so
        that a live stream's first frames do not wait for them)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the cue worker pool is closed")
            started = [_Worker() for _ in range(n - len(self._workers))]
            self._workers += started
        try:
            for worker in started:
                worker.wait_ready()
        except (OSError, EOFError) as exc:
            for worker in started:
                worker.broken = True
            code = started[0].process.poll() if started else None
            raise WorkerError(f"a cue worker process failed to start ({exc}; exit status "
                              f"{code})") from exc  # fmt: skip
        finally:
            for worker in started:
                self._give_back(worker)

    def locate(self, masks: Sequence[np.ndarray], confidences: Sequence[np.ndarray | None], *,
               view: FieldOfView, view_key: int, task: str,
               **params: Any) -> tuple[list[list[Instrument]], float]:  # fmt: skip
        """The instruments of each mask (``find_instruments(mask, task=task,
        confidence=confidence, view=view, **params)``, in order) and the CPU seconds the
        worker spent. ``view_key`` names ``view`` (one per video) for the workers' cache."""
        worker = self._idle.get()
        try:
            found, cpu = worker.locate(list(zip(masks, confidences, strict=True)),
                                       view_key=view_key, view=view, task=task,
                                       params=params, arena=self.arena)  # fmt: skip
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            worker.broken = True
            code = worker.process.poll()
            status = "" if code is None else f"; exit status {code}"
            raise WorkerError(f"a cue worker process stopped answering ({exc}{status})") from exc
        except BaseException as exc:
            # find_instruments' own error, raised in the worker: the worker is fine
            worker.broken = not isinstance(exc, Exception)
            raise
        finally:
            self._give_back(worker)
        with self._lock:
            self.cpu_s += cpu
        return found, cpu

    def _give_back(self, worker: _Worker) -> None:
        if not worker.broken:
            self._idle.put(worker)
            return
        with self._lock:  # replace it: the next caller gets a fresh one
            self._workers.remove(worker)
            replacement = None if self._closed else _Worker()
            if replacement is not None:
                self._workers.append(replacement)
        threading.Thread(target=worker.close, daemon=True).start()
        if replacement is not None:
            self._idle.put(replacement)

    def close(self) -> None:
        """Stop every worker (closing their sockets) and wait for them."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
        os.close(self.arena.fd)  # its memory stays mapped while arrays use it

    def __len__(self) -> int:
        return len(self._workers)


_SHARED: CuePool | None = None
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int) -> CuePool:
    """The process's pool, with at least ``workers`` workers (started on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = CuePool()
            atexit.register(_close_shared)
        pool = _SHARED
    pool.reserve(workers)
    return pool


def worker_cpu_s() -> float:
    """CPU seconds the shared pool's workers have spent on requests so far (0 without one)."""
    return 0.0 if _SHARED is None else _SHARED.cpu_s


def _close_shared() -> None:
    """At exit: stop the pipelines first (their threads may be waiting on a worker), then the
    workers."""
    pipeline = sys.modules.get("surgseg.pipeline")
    if pipeline is not None:
        pipeline._stop_running()
    if _SHARED is not None:
        _SHARED.close()


# --- the worker process ------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    """Answer requests until the socket closes."""
    import cv2

    from surgseg.cues import FieldOfView, find_instruments

    cv2.setNumThreads(1)  # the processes are the parallelism
    _send(sock, ("ready",))
    buffers: dict[str, mmap.mmap | None] = {"buffer": None, "arena": None}
    views: OrderedDict[int, FieldOfView] = OrderedDict()
    while True:
        try:
            message = _recv(sock)
        except (EOFError, OSError):
            return
        c0 = time.process_time()
        if message[0] in buffers:  # ("buffer" or "arena", size), then its file descriptor
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
            buffers[message[0]] = mmap.mmap(fds[0], message[1])
            os.close(fds[0])
        elif message[0] == "view":
            _, key, mask, shape = message
            views[key] = FieldOfView(mask, shape=shape)
            while len(views) > _VIEWS_KEPT:
                views.popitem(last=False)
        elif message[0] == "locate":
            _, key, task, params, frames = message
            view = views.get(key)
            if view is None:
                _send(sock, ("need_view", None, time.process_time() - c0))
                continue
            views.move_to_end(key)
            try:
                found = [find_instruments(_array(buffers, m), task=task, view=view,
                                          confidence=None if c is None else _array(buffers, c),
                                          **params) for m, c in frames]  # fmt: skip
                reply: tuple = ("ok", found)
            except Exception as exc:
                reply = ("error", exc)
            try:
                _send(sock, (*reply, time.process_time() - c0))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                error = RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")
                _send(sock, ("error", error, time.process_time() - c0))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m surgseg.cue_workers FD``: serve the socket with file descriptor FD."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    fd = int((sys.argv[1:] if argv is None else argv)[0])
    with socket.socket(fileno=fd) as sock:
        _serve(sock)


if __name__ == "__main__":
    main()
