"""What a user sees at the edge of every app: help, mistakes on the command line, output
locations, start-up. Each check runs the real console script in a subprocess."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surgseg.apps import cli_errors

BIN = Path(sys.executable).parent


def app(name: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / f"surgseg-{name}"), *args], capture_output=True, text=True,
                          timeout=timeout, **kw)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Hydra" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_every_missing_setting_in_one_line():
    one_line_error(app("bench"), "output_dir")
    one_line_error(app("infer"), "checkpoint, input, output_dir")
    one_line_error(app("eval"), "checkpoint, data.root, output_dir")


def test_a_typo_is_refused_with_the_closest_key(tmp_path):
    args = ("input=x.mp4", "checkpoint=m.pt", f"output_dir={tmp_path}/o")
    one_line_error(app("infer", *args, "batchsize=4"), "'batchsize'", "batch_size")
    one_line_error(app("infer", *args, "+batchsize=4"), "'batchsize'", "batch_size")
    one_line_error(app("infer", *args, "engine=trt"), "engine=trt", "tensorrt")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("setting", "needle"),
    [("batch_size=abc", "batch_size"), ("batch_size=0", "batch_size"),
     ("batch_size=-1", "batch_size"), ("input_size=[10,10]", "input_size"),
     ("workers.locate=0", "workers.locate"), ("outputs.masks=jpeg", "outputs.masks")],
)  # fmt: skip
def test_bad_values_name_their_key_before_any_work(setting, needle, make_checkpoint, tmp_path):
    video = tmp_path / "case.mp4"
    video.write_bytes(b"not looked at")
    out = tmp_path / "out"
    proc = app("infer", f"input={video}", f"checkpoint={make_checkpoint()}", f"output_dir={out}",
               setting)  # fmt: skip
    one_line_error(proc, needle)
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line(make_checkpoint, tmp_path):
    proc = app("infer", "input=x.mp4", f"checkpoint={make_checkpoint()}",
               f"output_dir={tmp_path}", "device=cuda")  # fmt: skip
    one_line_error(proc, "device=cuda", "no CUDA GPU")


def test_output_locations_that_cannot_be_written(make_checkpoint, tmp_path):
    from surgseg.synthetic import write_clip

    ckpt = make_checkpoint()
    clips = tmp_path / "clips"
    write_clip(clips / "c0", num_frames=1, width=64, height=64)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for where, needle in ((a_file, "is a file"), ("/proc/surgseg-test", "cannot be written")):
        for name, args in (("infer", ("input=x.mp4", f"checkpoint={ckpt}")),
                           ("eval", (f"checkpoint={ckpt}", f"data.root={clips}")),
                           ("export", (f"checkpoint={ckpt}",)),
                           ("train", (f"data.root={tmp_path}",))):  # fmt: skip
            one_line_error(app(name, *args, f"output_dir={where}"), str(where), needle)
        proc = app("stream", "input=x.mp4", f"checkpoint={ckpt}", f"output={where}/cues.jsonl")
        one_line_error(proc, str(where), needle)


def test_a_second_process_is_refused_the_same_output_folder(make_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a first surgseg process holds while it writes
    try:
        proc = app("infer", "input=x.mp4", f"checkpoint={make_checkpoint()}", f"output_dir={out}")
        one_line_error(proc, str(out), "another surgseg process")
    finally:
        os.close(fd)


def test_a_full_disk_is_one_line(capsys):
    @cli_errors("surgseg-x")
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "out/case.mp4/overlay.mp4")

    with pytest.raises(SystemExit) as exit_info:
        write()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == "surgseg-x: error: out/case.mp4/overlay.mp4: No space left on device"


def test_help_shows_the_apps_own_settings():
    proc = app("infer", "--help")
    assert proc.returncode == 0
    assert "batch_size: 4" in proc.stdout and "cues.min_area=50" in proc.stdout
    assert "# pixels; smaller components" in proc.stdout  # the comments
    for unused in ("model=", "optim=", "augment="):
        assert unused not in proc.stdout


def test_import_loads_only_what_it_uses():
    code = ("import sys, surgseg.decode; "
            "print('torch' in sys.modules, 'surgseg.live' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_during_start_up_is_one_line(delay, make_checkpoint, tmp_path):
    """From the first import of surgseg on (the interpreter's own start-up, some tens of
    milliseconds, is out of reach)."""
    proc = subprocess.Popen([str(BIN / "surgseg-infer"), "input=x.mp4",
                             f"checkpoint={make_checkpoint()}", f"output_dir={tmp_path}/o"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 2), err  # 2: it got to the missing video before the signal


def test_progress_in_a_log_file_is_plain_lines(make_checkpoint, tmp_path):
    from surgseg.synthetic import write_clip

    clip = write_clip(tmp_path / "clip", num_frames=4, width=80, height=64)
    log = tmp_path / "infer.log"
    command = [str(BIN / "surgseg-infer"), f"input={clip / 'video.mp4'}",
               f"checkpoint={make_checkpoint()}", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    with log.open("w") as stderr:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text
    assert "video.mp4: 4/4 frames (100 %)" in text
