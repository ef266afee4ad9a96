"""Write files under a temporary name and rename them into place, so nothing half-written
ever looks finished."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def _temporary(path: Path) -> Path:
    """The temporary sibling ``atomic_path`` writes ``path`` under, in this process."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextmanager
def naming(path: str | Path, *also: str | Path) -> Iterator[None]:
    """Re-raise an OSError from the block that names no file, or names ``path``'s temporary
    file or one of ``also`` (staging files that stand for ``path``), as the same error naming
    ``path``: the one line a user sees for a full disk says which output could not be written.
    """
    path = Path(path)
    stand_ins = {str(p) for q in (path, *map(Path, also)) for p in (q, _temporary(q))} - {str(path)}
    try:
        yield
    except OSError as exc:
        if exc.errno is None or not (exc.filename is None or str(exc.filename) in stand_ins):
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format from it still work.
    An OSError of the block that names no file or the temporary one (a full disk) is raised
    naming ``path`` (``naming``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with naming(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically, with plain file I/O: a full disk is an
    ``OSError(ENOSPC)`` naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


class Output:
    """A file output that ``close`` finishes and ``abort`` drops. As a context manager it
    closes when the block succeeds and aborts when it raises."""

    def close(self) -> None:
        """Finish the output."""

    def abort(self) -> None:
        """Stop after an error; by default the same as ``close``."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
