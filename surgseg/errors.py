"""User-facing errors: one clear line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SurgsegError(Exception):
    """An error the user caused (bad path, corrupt video, wrong checkpoint, bad config value).

    The command-line apps print it as a single line and exit non-zero, without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class ConfigError(SurgsegError):
    """A configuration value that is out of range or unknown."""


class VideoError(SurgsegError):
    """A video that is missing, unreadable, or has no decodable frame."""


class CheckpointError(SurgsegError):
    """A checkpoint that is missing, not ours, or does not fit the task asked for."""


class DatasetError(SurgsegError):
    """A dataset folder whose layout or labels are wrong."""
