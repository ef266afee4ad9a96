"""What a user sees at the edge of every app: help, mistakes on the command line, output
locations, start-up. Each check runs the real console script in a subprocess."""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from surgseg.apps import APPS, CONF_DIR
from tests._full_disk import on_a_full_disk

BIN = Path(sys.executable).parent
NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(),
                             reason="this machine has CUDA")  # fmt: skip


def app(name: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / f"surgseg-{name}"), *args], capture_output=True, text=True,
                          timeout=timeout, **kw)  # fmt: skip


def apps_at_once(calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess]:
    """``app(*call)`` for each call, several at a time (each mostly waits on its imports)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: app(*call), calls))


def one_line_error(proc: subprocess.CompletedProcess, *needles: str, status: int = 2) -> str:
    assert proc.returncode == status, proc.stderr
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


@NO_CUDA
def test_mistakes_found_late_before_leave_nothing_behind(make_checkpoint, tmp_path):
    """Each of these once made its output folder (or Hydra's) before the line came, or had
    no line at all."""
    ckpt = make_checkpoint()
    from surgseg.synthetic import write_clip

    write_clip(tmp_path / "clips" / "c0", num_frames=1, width=64, height=64)
    video = tmp_path / "x.mp4"  # exists; never read by the cases that use it
    video.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    noise = tmp_path / "noise.onnx.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "cwd").mkdir()
    from surgseg.checkpoint import load_checkpoint
    from surgseg.export import export_onnx

    model, meta = load_checkpoint(ckpt)
    static = export_onnx(model, tmp_path / "static.onnx", meta=meta, dynamic=False)
    infer = ("infer", f"input={video}", f"checkpoint={ckpt}")
    fixed = ("engine=onnxruntime", f"engine.onnx_path={static}", "cues.refine_tips=true")
    cases = [
        ((*infer, *fixed), "cues.refine_tips needs an engine that runs 160×160 crops"),
        (("stream", f"input={video}", f"checkpoint={ckpt}", *fixed), "cues.refine_tips needs"),
        (("bench", f"input={video}", "cues.refine_tips=true", "standin_fps=100"),
         "cues.refine_tips needs the model"),
        (("bench", f"input={video}", f"checkpoint={ckpt}", *fixed, "input_size=null"),
         "cues.refine_tips needs"),
        (("bench", f"input={video}", f"checkpoint={ckpt}", *fixed[:2]),  # bench: 256×320
         "engine=onnxruntime cannot run 256×320 inputs (input_size=[256, 320])"),
        ((*infer, "engine=onnxruntime", f"engine.onnx_path={noise}"), "not an ONNX model"),
        ((*infer, "engine=onnxruntime", "engine.precision=fp8"), "engine.precision"),
        ((*infer, "outputs.overlay=maybe"), "outputs.overlay=maybe: Value 'maybe' is not a valid"),
        ((*infer, "seed=abc"), "seed must be an integer"),
        ((*infer, "cues.track_max_distance=-1"), "cues.track_max_distance must be a number > 0"),
        (("infer", "-m", *infer[1:], "batch_size=1,2"), "-m (sweeps) is for surgseg-bench"),
        (("infer", f"input={video}", f"checkpoint={tmp_path}"), "is a folder, not a checkpoint"),
        (("stream", f"input={text}", f"checkpoint={ckpt}"), "not a readable video"),
        (("stream", f"input={video}", f"checkpoint={ckpt}", "max_age=-1"), "max_age must be"),
        (("bench", f"input={video}", "max_frames=0"), "max_frames must be"),
        (("bench", f"input={text}", f"checkpoint={ckpt}"), "not a readable video"),
        (("train", f"data.root={tmp_path / 'clips'}", "data.val_videos=[nope]"), "'nope'"),
        (("train", f"data.root={video}"), "is a file, not a dataset folder"),
    ]
    calls = []
    for i, (call, _) in enumerate(cases):
        where = tmp_path / f"out{i}"
        calls.append((*call, f"output={where}/cues.jsonl" if call[0] == "stream"
                      else f"output_dir={where}"))  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda c: app(*c, cwd=tmp_path / "cwd"), calls))
    for i, ((_, needle), proc) in enumerate(zip(cases, procs, strict=True)):
        one_line_error(proc, needle)
        assert not (tmp_path / f"out{i}").exists(), needle
    assert not list((tmp_path / "cwd").iterdir())  # no multirun/ of Hydra's


def test_bench_names_an_output_dir_that_is_a_file(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(app("bench", f"output_dir={a_file}", "max_frames=1"), str(a_file), "is a file")
    one_line_error(app("bench", f"output_dir={a_file}/sub", "max_frames=1"), "cannot be written")


def test_cuda_without_a_gpu_is_one_line(make_checkpoint, tmp_path):
    proc = app("infer", "input=x.mp4", f"checkpoint={make_checkpoint()}",
               f"output_dir={tmp_path}", "device=cuda")  # fmt: skip
    one_line_error(proc, "device=cuda", "no CUDA GPU")
    # before any output folder is made or any data generated
    for name, args in (("train", (f"data.root={tmp_path}",)), ("demo", ())):
        out = tmp_path / name
        one_line_error(app(name, *args, f"output_dir={out}", "device=cuda"),
                       "device=cuda", "no CUDA GPU")  # fmt: skip
        assert not out.exists()


def test_export_refuses_a_device_it_would_ignore(make_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = app("export", f"checkpoint={make_checkpoint()}", f"output_dir={out}", "device=cuda")
    one_line_error(proc, "device=cuda", "CPU only")
    assert not out.exists()


def test_resume_without_a_run_names_every_missing_setting(tmp_path):
    from surgseg.apps import check_command_line
    from surgseg.apps.train import run
    from surgseg.errors import ConfigError

    out = tmp_path / "run"
    one_line_error(app("train", f"output_dir={out}", "resume=true"),
                   "missing required setting(s): data.root (add data.root=...")  # fmt: skip
    one_line_error(app("train", "resume=true"),
                   "missing required setting(s): data.root, output_dir")  # fmt: skip
    assert not out.exists()
    # run() itself, as the demo calls it, checks them before it claims the folder
    cfg = check_command_line("train", [f"output_dir={out}", "resume=true"], may_miss=lambda c: True)
    with pytest.raises(ConfigError, match=r"missing required setting\(s\): data\.root \("):
        run(cfg)
    assert not out.exists()


def test_a_new_run_into_a_folder_holding_one_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    one_line_error(app("train", f"output_dir={out}"), str(out), "already holds a training run")
    assert [p.name for p in out.iterdir()] == ["last.pt"]


def test_output_locations_that_cannot_be_written(make_checkpoint, tmp_path):
    from surgseg.synthetic import write_clip

    ckpt = make_checkpoint()
    clips = tmp_path / "clips"
    write_clip(clips / "c0", num_frames=1, width=64, height=64)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    video = tmp_path / "x.mp4"  # an input that exists: infer names a missing one first
    video.touch()
    cases = [(where, needle) for where, needle in ((a_file, "is a file"),
                                                   ("/proc/surgseg-test", "cannot be written"))
             for _ in range(5)]  # fmt: skip
    calls = []
    for where, _ in cases[::5]:
        calls += [("infer", f"input={video}", f"checkpoint={ckpt}", f"output_dir={where}"),
                  ("eval", f"checkpoint={ckpt}", f"data.root={clips}", f"output_dir={where}"),
                  ("export", f"checkpoint={ckpt}", f"output_dir={where}"),
                  ("train", f"data.root={clips}", f"output_dir={where}"),
                  ("stream", f"input={clips / 'c0' / 'video.mp4'}", f"checkpoint={ckpt}",
                   f"output={where}/cues.jsonl")]  # fmt: skip
    for (where, needle), proc in zip(cases, apps_at_once(calls), strict=True):
        one_line_error(proc, str(where), needle)


# One app in the default suite (they share claim_output_dir); all of them with -m slow.
@pytest.mark.parametrize("name", ["infer", *(pytest.param(n, marks=pytest.mark.slow)
                                             for n in ("train", "export", "stream"))])  # fmt: skip
def test_a_second_process_is_refused_the_same_output_folder(name, make_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = make_checkpoint()
    video = tmp_path / "x.mp4"  # an input that exists: infer names a missing one first
    video.touch()
    args = {"infer": (f"input={video}", f"checkpoint={ckpt}", f"output_dir={out}"),
            "train": (f"data.root={tmp_path}", f"output_dir={out}"),
            "export": (f"checkpoint={ckpt}", f"output_dir={out}"),
            "stream": ("input=x.mp4", f"checkpoint={ckpt}",
                       f"output={out}/cues.jsonl")}[name]  # fmt: skip
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a first surgseg process holds while it writes
    try:
        one_line_error(app(name, *args), str(out), "another surgseg process")
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["infer", "train", *(pytest.param(n, marks=pytest.mark.slow)
                                                      for n in ("stream", "export"))])  # fmt: skip
def test_a_full_disk_is_one_line_naming_the_file(name, make_checkpoint, tmp_path):
    """A real full filesystem (a filled tmpfs), not a simulated error."""
    from surgseg.synthetic import write_clip

    ckpt, out = make_checkpoint(), tmp_path / "full"
    at = re.escape(str(out))
    for clip in {"train": ("c0", "c1"), "export": ()}.get(name, ("c0",)):
        write_clip(tmp_path / "clips" / clip, num_frames=4, width=80, height=64)
    video = tmp_path / "clips" / "c0" / "video.mp4"
    args, written = {
        "infer": ((f"input={video}", f"checkpoint={ckpt}", f"output_dir={out}", "progress=false"),
                  rf"{at}/video\.mp4/\S+"),
        "stream": ((f"input={video}", f"checkpoint={ckpt}", f"output={out}/cues.jsonl",
                    "realtime=false"), rf"{at}/cues\.jsonl"),
        "export": ((f"checkpoint={ckpt}", f"output_dir={out}"), rf"{at}/binary\.onnx"),
        "train": (("+experiment=synthetic_resnet18", f"data.root={tmp_path / 'clips'}",
                   "data.val_videos=[c1]", "input_size=[64,80]", "crop_size=[32,40]",
                   "batch_size=2", "max_steps=1", "warmup_steps=0", "progress=false",
                   "tensorboard=false", f"output_dir={out}"), rf"{at}/last\.pt"),
    }[name]  # fmt: skip
    proc = on_a_full_disk(out, str(BIN / f"surgseg-{name}"), *args)
    line = one_line_error(proc, status=1)
    assert re.fullmatch(f"surgseg-{name}: error: {written}: No space left on device", line), line


@pytest.mark.parametrize("name", sorted(APPS))
def test_help_shows_the_apps_own_settings(name):
    proc = app(name, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = proc.stdout
    assert "\n  device: cpu" in text and "\n  seed: 0" in text  # conf/common.yaml, in every app
    assert text.count("\n  device: cpu") == 1  # an app restating a shared key says it once
    groups = re.findall(r"^(\S+)=(\S+) \(one of: (.*)\); its settings: (\S+)\.<key>=value "
                        r"\(see (\S+)\)$", text, re.MULTILINE)  # fmt: skip
    assert len(groups) == text.count("(one of:")
    for entry, default, options, key, yaml in groups:
        group, _, package = entry.partition("@")
        assert key == (package or group) and default in options.split(", "), entry
        assert (Path(CONF_DIR).parent / yaml).is_file() and yaml == f"conf/{group}/{default}.yaml"
    if name == "infer":
        assert "batch_size: 4" in text and "cues.min_area=50" in text
        assert "# pixels; smaller components" in text  # the comments
        for unused in ("model=", "optim=", "augment@"):
            assert unused not in text
    if name == "export":
        assert "device: cpu         # the CPU only" in text
    if name == "train":
        assert ("augment@augment.train=train (one of: eval, train); its settings: "
                "augment.train.<key>=value (see conf/augment/train.yaml)") in text  # fmt: skip


def test_help_into_a_reader_that_stops_early_is_no_error():
    proc = subprocess.run(f"{BIN / 'surgseg-infer'} --help | true", shell=True,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_hydra_flags_still_refuse_unknown_keys():
    one_line_error(app("infer", "--cfg", "job", "batchsize=4"), "'batchsize'", "batch_size")
    one_line_error(app("train", "-c", "job", "+batchsize=4"), "'batchsize'", "batch_size")
    one_line_error(app("infer", "--info", "defaults", "engine=trt"), "engine=trt", "tensorrt")
    # showing the config needs none of the required settings
    proc = app("infer", "--cfg", "job", "batch_size=3")
    assert proc.returncode == 0 and "batch_size: 3" in proc.stdout, proc.stderr
    proc = app("train", "--cfg", "job", "--package", "optim", "optim.lr=0.5")
    assert proc.returncode == 0 and "lr: 0.5" in proc.stdout, proc.stderr
    assert app("train", "--info", "defaults").returncode == 0
    assert app("infer", "--version").stdout.count("Hydra") == 1


def test_training_logs_say_the_miou_leaves_out_background(tmp_path, capsys):
    from surgseg.train import _log, _write_csv

    row = {"epoch": 1, "step": 4, "lr": 1e-3, "train_loss": 0.5, "val_miou": 0.25,
           "val_miou_all": 0.5, "val_iou": [0.75, 0.25], "time_s": 1.0}  # fmt: skip
    _log(row, 2)
    assert "val mIoU (foreground) 0.2500" in capsys.readouterr().out
    _write_csv(tmp_path / "metrics.csv", [row], ["background", "tool"])
    header, values = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",")[4:6] == ["val_miou", "val_miou_all"]
    assert values.split(",")[4:6] == ["0.25", "0.5"]
    readme = (Path(CONF_DIR).parent / "README.md").read_text()
    assert "`val_miou` is the mean IoU of the foreground classes" in readme
    assert "`miou_all` includes background" in readme  # what val_miou_all follows


def test_eval_checks_its_output_folder_before_evaluating(make_checkpoint, tmp_path, monkeypatch):
    import surgseg.evaluate
    from surgseg.apps import check_command_line
    from surgseg.apps.eval import run
    from surgseg.errors import ConfigError
    from surgseg.synthetic import write_clip

    write_clip(tmp_path / "clips" / "c0", num_frames=1, width=64, height=64)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    video = tmp_path / "x.mp4"  # an input that exists: infer names a missing one first
    video.touch()

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before the output folder was checked")

    monkeypatch.setattr(surgseg.evaluate, "evaluate", evaluate)
    cfg = check_command_line("eval", [f"checkpoint={make_checkpoint()}", f"output_dir={a_file}",
                                      f"data.root={tmp_path / 'clips'}"])  # fmt: skip
    with pytest.raises(ConfigError, match="is a file"):
        run(cfg)


def _first_overlay_frame(out: Path) -> np.ndarray:
    import av

    (overlay,) = out.rglob("overlay.mp4")
    with av.open(str(overlay)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)


def test_overlay_legend_false_reaches_the_overlay(make_checkpoint, tmp_path):
    from surgseg.synthetic import write_clip

    clip = write_clip(tmp_path / "clip", num_frames=2, width=160, height=128)
    frames = {}
    for legend in ("true", "false"):
        out = tmp_path / f"legend_{legend}"
        subprocess.run([str(BIN / "surgseg-infer"), f"input={clip / 'video.mp4'}",
                        f"checkpoint={make_checkpoint()}", f"output_dir={out}", "progress=false",
                        "outputs.masks=null", "outputs.overlay_scale=1",
                        f"outputs.overlay_legend={legend}"],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
        frames[legend] = _first_overlay_frame(out)
    corner = np.abs(frames["true"][:16, :16] - frames["false"][:16, :16]).mean()
    bottom = np.abs(frames["true"][112:] - frames["false"][112:]).mean()
    assert corner > 20 and bottom < 3, (corner, bottom)


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
    # 2: it got to the missing video before the signal; -SIGINT: the signal came as it exited
    # after that line (the shell shows 130 for both Ctrl-C endings)
    assert proc.returncode in (130, 2, -signal.SIGINT), err


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
