"""Progress of long work: a tqdm bar on a terminal, a plain line every ``interval_s`` seconds
when stderr goes to a file or a pipe (no carriage returns in log files)."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class LineProgress:
    """``desc: n/total unit (p %), rate unit/s`` on stderr every ``interval_s`` seconds and once
    at the end; the same methods as the tqdm bars used here (``update``, ``close``,
    ``write``)."""

    def __init__(self, *, total: int | None, desc: str, unit: str, interval_s: float):
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.n = 0
        self._start = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        return f"{self.desc}: {done} {self.unit}s{share}{rate}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.write(self._line())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.write(self._line())

    @staticmethod
    def write(message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def progress_bar(*, total: int | None, desc: str, unit: str = "frame", enabled: bool = True,
                 interval_s: float = 30.0, **tqdm_options: Any) -> tqdm | LineProgress:  # fmt: skip
    """A tqdm bar when stderr is a terminal, else a ``LineProgress``; disabled: a silent
    tqdm."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total=total, desc=desc, unit=unit, interval_s=interval_s)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **tqdm_options)
