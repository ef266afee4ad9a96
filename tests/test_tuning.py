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
        tuning.tune_process()
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_worker_environment_sets_opencv_threads_and_heap():
    code = "import cv2, os; print(cv2.getNumThreads(), os.environ['MALLOC_MMAP_THRESHOLD_'])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **tuning.ENV},
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["1", str(tuning.MMAP_THRESHOLD)]
