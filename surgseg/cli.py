"""The console scripts. Each imports its app only once running here, so that a Ctrl-C at
any moment of start-up ends with one line and exit status 130, not a traceback."""

from __future__ import annotations

import sys


def _launch(app: str) -> None:
    try:
        from surgseg.apps import launch

        launch(app)
    except KeyboardInterrupt:
        print(f"surgseg-{app}: interrupted", file=sys.stderr)
        sys.exit(130)


def train() -> None:
    """surgseg-train"""
    _launch("train")


def infer() -> None:
    """surgseg-infer"""
    _launch("infer")


def demo() -> None:
    """surgseg-demo"""
    _launch("demo")


def evaluate() -> None:
    """surgseg-eval"""
    _launch("eval")


def export() -> None:
    """surgseg-export"""
    _launch("export")


def stream() -> None:
    """surgseg-stream"""
    _launch("stream")


def bench() -> None:
    """surgseg-bench"""
    _launch("bench")
