"""A real full disk for a subprocess: a tiny tmpfs mounted over a folder in a private mount
namespace (``unshare -Urm``, no root needed where user namespaces are allowed), filled up
before the command starts."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# $0: the folder; mount a 64 KiB tmpfs over it, fill it, run the command in it.
_SCRIPT = ('mount -t tmpfs -o size=64k surgseg-full "$0" && '
           '{ dd if=/dev/zero of="$0/filler" bs=4k 2>/dev/null; true; } && exec "$@"')  # fmt: skip


@functools.cache
def _unavailable() -> str | None:
    """Why a full disk cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    with tempfile.TemporaryDirectory() as folder:
        try:
            probe = subprocess.run(["unshare", "-Urm", "sh", "-c", _SCRIPT, folder, "true"],
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unshare failed: {exc}"
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()[:200]}"
    return None


def on_a_full_disk(folder: Path, *command: str, timeout: float = 300
                   ) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``command`` with ``folder`` (created here) on a full filesystem; skip the test where
    this machine cannot make one."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "-Urm", "sh", "-c", _SCRIPT, str(folder), *command],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
