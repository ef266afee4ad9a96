"""Process-wide settings of our commands and worker processes (surgseg.tuning)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2

from surgseg import tuning


def test_tune_process_runs_opencv_on_the_calling_thread():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)  # a pool, whatever this machine's core count
        tuning.tune_process()
        assert cv2.getNumThreads() == 1
        assert tuning.keep_freed_memory()  # glibc accepted every malloc setting
    finally:
        cv2.setNumThreads(before)


def test_worker_environment_runs_opencv_on_one_thread():
    code = "import cv2; print(cv2.getNumThreads())"
    env = {**os.environ, **tuning.ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == ["1"]
