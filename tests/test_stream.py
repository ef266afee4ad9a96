"""Live-feed streaming: pacing, drop policies, latency, clean stops, the API and the app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import surgseg
from surgseg.apps import CONF_DIR
from surgseg.apps.stream import run
from surgseg.checkpoint import CheckpointMeta
from surgseg.decode import read_frames
from surgseg.encode import VideoWriter
from surgseg.engines import Engine
from surgseg.live import stream
from surgseg.predictor import Predictor
from surgseg.sinks import read_masks
from surgseg.synthetic import write_clip
from surgseg.tasks import class_names

# Tiny tensors: intra-op threads only add waits on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 30


class SleepEngine(Engine):
    """Sleeps ``delay_s`` per call; logits: foreground where the normalized image is bright."""

    name = "sleep"

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.calls = 0

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay_s)
        bright = batch.mean(dim=1, keepdim=True)
        return torch.cat([-bright, bright], dim=1)


def sleep_predictor(delay_s: float) -> Predictor:
    meta = CheckpointMeta(task="binary", class_names=list(class_names("binary")), model={},
                          input_size=(32, 40))  # fmt: skip
    return Predictor(SleepEngine(delay_s), meta)


def bar_video(path: Path, *, frames: int, fps: float = FPS, size=(80, 64)) -> Path:
    """A dark video with a bright bar moving across it."""
    width, height = size
    with VideoWriter(path, width=width, height=height, fps=fps) as writer:
        for i in range(frames):
            image = np.full((height, width, 3), 30, np.uint8)
            x = 5 + (i * 3) % (width - 20)
            image[10:50, x : x + 12] = 220
            writer.write(image)
    return path


@pytest.fixture(scope="module")
def one_second(tmp_path_factory) -> Path:
    return bar_video(tmp_path_factory.mktemp("video") / "bar.mp4", frames=FPS)


def _no_pipeline_threads() -> bool:
    names = {"decode", "segment", "locate", "track"}
    return not any(t.name.split("_")[0] in names for t in threading.enumerate())


@pytest.mark.parametrize("drop", ["keep_latest", "drop_new"])
def test_slow_model_in_real_time_drops_frames_and_keeps_latency_bounded(one_second, drop):
    interval = 1 / FPS
    live = stream(one_second, predictor=sleep_predictor(2 * interval), drop=drop)
    results = list(live)
    summary = live.summary()
    indices = [r.index for r in results]
    assert summary["frames_released"] == FPS and summary["complete"]
    assert summary["frames_dropped"] > FPS // 4
    assert len(results) + summary["frames_dropped"] == FPS
    assert summary["frames_in_flight"] == 0
    assert indices == sorted(set(indices))
    # Without dropping, the wait would grow by one interval per frame (about 1 s at the end).
    assert max(r.latency_s for r in results) < 6 * interval
    assert summary["latency_ms"]["p99"] < 6 * 1000 * interval
    if drop == "keep_latest":  # the newest frames get through, each waiting ≤ max_age = 0.5
        # (medians and a margin of one frame: a shared machine delays single frames)
        assert indices[-1] >= FPS - 3
        assert summary["stages"]["segment"]["dropped"] > 0  # stale frames
        assert summary["latency_ms"]["p50"] < 1000 * interval * (0.5 + 2 + 1)
    assert _no_pipeline_threads()


def test_real_time_paces_frames_and_offline_runs_free(one_second):
    t0 = time.perf_counter()
    live = stream(one_second, predictor=sleep_predictor(0.0), realtime=True)
    results = list(live)
    paced_wall = time.perf_counter() - t0
    assert [r.index for r in results] == list(range(FPS))
    assert paced_wall >= (FPS - 1) / FPS * 0.95  # frames released at their timestamps
    assert live.summary()["stages"]["decode"]["busy_s"] < 0.5 * paced_wall  # not the waits
    t0 = time.perf_counter()
    offline = stream(one_second, predictor=sleep_predictor(0.005), realtime=False)
    assert [r.index for r in offline] == list(range(FPS))
    assert offline.summary()["frames_dropped"] == 0
    assert time.perf_counter() - t0 < paced_wall


def test_stop_event_ends_the_stream_and_its_threads(one_second):
    stop = threading.Event()
    live = stream(one_second, predictor=sleep_predictor(0.0), realtime=True, stop=stop)
    seen = []
    for result in live:
        seen.append(result.index)
        if result.index == 5:
            stop.set()
    assert seen[:6] == list(range(6)) and len(seen) < FPS
    summary = live.summary()
    assert not summary["complete"]
    assert_counts_add_up(summary)
    assert _no_pipeline_threads()


def assert_counts_add_up(summary: dict) -> None:
    """Every released frame is emitted, dropped or still in flight when the stream stopped;
    every stage's busy time and time per frame are ≥ 0."""
    emitted, dropped, in_flight = (summary[f"frames_{k}"] for k in ("emitted", "dropped",
                                                                    "in_flight"))  # fmt: skip
    assert min(emitted, dropped, in_flight) >= 0, summary
    assert summary["frames_released"] == emitted + dropped + in_flight, summary
    for name, stage in summary["stages"].items():
        assert stage["busy_s"] >= 0, (name, stage)
        assert stage["ms_per_frame"] is None or stage["ms_per_frame"] >= 0, (name, stage)


@pytest.mark.parametrize("results", [1, 3])
@pytest.mark.parametrize("regime", ["source_waits", "model_behind"])
def test_leaving_the_loop_early_keeps_the_summary_consistent(regime, results, tmp_path):
    """``break`` while the source waits for the next frame's time (a fast model): that wait,
    cut short, is no part of the released frames' decoding; ``break`` while the model is
    behind: the frames waiting for it or inside a stage at the stop are counted in flight."""
    fps, delay = {"source_waits": (10, 0.03), "model_behind": (FPS, 2.5 / FPS)}[regime]
    video = bar_video(tmp_path / "clip.mp4", frames=30, fps=fps)
    live = surgseg.stream(video, predictor=sleep_predictor(delay), realtime=True,
                          max_age=None)  # the model takes every waiting frame  # fmt: skip
    for seen, _ in enumerate(live, start=1):
        if seen == results:
            break
    summary = live.summary()
    assert summary["frames_emitted"] == results and not summary["complete"]
    assert_counts_add_up(summary)
    assert summary["stages"]["decode"]["fps"] is not None
    if regime == "model_behind":  # at least the frame the model had taken at the stop
        assert summary["frames_in_flight"] >= 1
    assert _no_pipeline_threads()


def test_keyboard_interrupt_in_the_consumer_then_close(one_second):
    live = stream(one_second, predictor=sleep_predictor(0.0), realtime=True)
    with pytest.raises(KeyboardInterrupt), live:
        for result in live:
            if result.index == 3:
                raise KeyboardInterrupt
    assert _no_pipeline_threads()
    assert live.summary()["frames_emitted"] == 4
    assert_counts_add_up(live.summary())


def test_stream_matches_the_sequential_predictor(make_checkpoint, tmp_path):
    clip = write_clip(tmp_path / "clip", num_frames=6, width=80, height=64, fps=25, seed=1)
    checkpoint = make_checkpoint("parts")
    results = list(surgseg.stream(clip / "video.mp4", checkpoint=checkpoint, realtime=False))
    reference = Predictor.from_checkpoint(checkpoint)
    frames = list(read_frames(clip / "video.mp4"))
    assert [r.index for r in results] == list(range(6))
    for result, frame in zip(results, frames, strict=True):
        expected = reference.predict([frame.image])[0]
        np.testing.assert_array_equal(result.mask, expected.mask)
        assert result.time_s == pytest.approx(frame.time_s)
        assert isinstance(result.cues, list) and result.latency_s > 0
        for inst in result.cues:
            assert {"id", "tip", "entry", "axis"} <= set(inst)


def test_stream_needs_exactly_one_model_source(one_second, make_checkpoint):
    from surgseg.errors import ConfigError

    with pytest.raises(ConfigError):
        stream(one_second)
    with pytest.raises(ConfigError, match="drop"):
        stream(one_second, predictor=sleep_predictor(0), drop="oldest")


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="stream", overrides=overrides)


def test_app_writes_cues_masks_and_summary(make_checkpoint, tmp_path, one_second):
    out = tmp_path / "out" / "cues.jsonl"
    cfg = _compose([f"input={one_second}", f"checkpoint={make_checkpoint()}", f"output={out}",
                    "masks=ffv1", "realtime=false"])  # fmt: skip
    summary = run(cfg)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["index"] for rec in lines] == list(range(FPS))
    assert all(set(rec) >= {"index", "pts", "time_s", "instruments"} for rec in lines)
    masks = list(read_masks(out.parent / "masks.mkv"))
    assert len(masks) == FPS and masks[0][2].shape == (64, 80)
    saved = json.loads((out.parent / "cues.summary.json").read_text())
    assert saved["frames_emitted"] == summary["frames_emitted"] == FPS
    assert saved["latency_ms"]["p99"] >= saved["latency_ms"]["p50"] > 0


def test_a_cut_short_file_is_said_in_the_summary(make_checkpoint, tmp_path, one_second,
                                                 capsys):
    from _video_utils import cut_in_packet, faststart_copy

    cut = cut_in_packet(faststart_copy(one_second, tmp_path / "fast.mp4"), tmp_path / "cut.mp4",
                        FPS // 2)  # fmt: skip
    summary = run(_compose([f"input={cut}", f"checkpoint={make_checkpoint()}",
                            f"output={tmp_path / 'out' / 'cues.jsonl'}", "realtime=false"]))
    lost = summary["decode"]["missing"]
    assert lost > 0 and summary["frames_emitted"] + lost == FPS and summary["complete"]
    saved = json.loads((tmp_path / "out" / "cues.summary.json").read_text())
    assert saved["decode"]["events"][0]["kind"] == "end"
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"surgseg-stream: {cut}: {lost} frames missing at the end (after ")


def test_app_writes_through_the_stage_modules_outputs(make_checkpoint, tmp_path, one_second,
                                                      monkeypatch):
    """One way to open and write a run's outputs: the stream opens them once with
    ``stages.open_outputs``, and each line is ``stages.cue_record`` plus its latency; the
    summary records the model as run.json does."""
    import surgseg.stages
    from surgseg.decode import Frame
    from surgseg.stages import cue_record

    opened = []
    real_open = surgseg.stages.open_outputs
    monkeypatch.setattr(surgseg.stages, "open_outputs",
                        lambda *a, **k: opened.append(k) or real_open(*a, **k))  # fmt: skip
    out = tmp_path / "out" / "cues.jsonl"
    cfg = _compose([f"input={one_second}", f"checkpoint={make_checkpoint('parts')}",
                    f"output={out}", "masks=png", "realtime=false"])  # fmt: skip
    summary = run(cfg)
    assert len(opened) == 1 and opened[0]["cues"] == out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    frames = list(read_frames(one_second))
    for line, frame in zip(lines, frames, strict=True):
        expected = cue_record(Frame(frame.index, frame.pts, frame.time_s, frame.image),
                              line["instruments"])  # fmt: skip
        assert list(line) == [*expected, "latency_ms"]
        assert {k: line[k] for k in expected} == expected and line["latency_ms"] > 0
    masks = {i: m for i, _, m in read_masks(out.parent / "masks")}
    assert sorted(masks) == list(range(FPS)) and masks[0].shape == (64, 80)
    model = {"task": "parts", "classes": {"background": 0, "shaft": 1, "wrist": 2,
             "clasper": 3}, "input_size": [64, 80], "engine": "torch", "device": "cpu"}  # fmt: skip
    saved = json.loads((out.parent / "cues.summary.json").read_text())
    assert saved["model"] == summary["model"] == model


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# (settings, with {d}: an empty folder, {f}: a file, {v}: the input video; words of the line)
_LATE_PATHS = {
    "summary-a-folder": (["output={d}/c.jsonl", "summary={d}"], ["{d}", "summary is a folder"]),
    "output-a-folder": (["output={d}"], ["{d}", "output is a folder"]),
    "summary-is-output": (["output={d}/c.jsonl", "summary={d}/c.jsonl"],
                          ["summary and output", "same file"]),
    "output-under-a-file": (["output={f}/c.jsonl"], ["{f}", "output", "is a file"]),
    "summary-under-a-file": (["output={d}/new/c.jsonl", "summary={f}/sub/s.json"],
                             ["{f}", "summary", "is a file"]),
    "masks_dir-a-file": (["output={d}/c.jsonl", "masks=png", "masks_dir={f}"],
                         ["{f}", "masks_dir", "is a file"]),
    "masks.mkv-a-folder": (["output={d}/c.jsonl", "masks=ffv1", "+mkdir={d}/masks.mkv"],
                           ["masks.mkv", "masks", "is a folder"]),
    "masks-png-folder-a-file": (["output={d}/c.jsonl", "masks=png", "+touch={d}/masks"],
                                ["{d}/masks", "masks", "is a file"]),
    "default-summary-a-folder": (["output={d}/c.jsonl", "+mkdir={d}/c.summary.json"],
                                 ["c.summary.json", "summary", "is a folder"]),
    "output-the-input": (["output={v}"], ["{v}", "output", "the input video"]),
}  # fmt: skip


@pytest.mark.parametrize(("settings", "words"), list(_LATE_PATHS.values()), ids=list(_LATE_PATHS))
def test_app_checks_its_output_paths_before_any_work(settings, words, one_second, tmp_path,
                                                     monkeypatch):  # fmt: skip
    """Each of these once failed only after the model was loaded, or once the whole video
    was processed and its cues written. Now: a ConfigError naming the path and the key,
    before the model is loaded, and nothing written."""
    import shutil

    import surgseg.apps.stream as app

    video = Path(shutil.copy(one_second, tmp_path / "v.mp4"))
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    names = {"d": tmp_path / "d", "f": tmp_path / "f", "v": video}
    overrides = []
    for setting in settings:
        setting = setting.format(**names)
        if setting.startswith("+mkdir="):
            Path(setting[7:]).mkdir(parents=True)
        elif setting.startswith("+touch="):
            Path(setting[7:]).touch()
        else:
            overrides.append(setting)
    before = _tree(tmp_path)
    cfg = _compose([f"input={video}", "checkpoint=never-loaded.pt", *overrides])

    def build_predictor(*args, **kwargs):
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr(app, "build_predictor", build_predictor)
    from surgseg.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        app.run(cfg)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word.format(**names) in message, message
    assert _tree(tmp_path) == before


def test_app_refuses_a_folder_another_process_writes_into_before_the_model(
        one_second, tmp_path, monkeypatch):  # fmt: skip
    import fcntl

    import surgseg.apps.stream as app
    from surgseg.errors import ConfigError

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(app, "build_predictor", lambda *a, **k: pytest.fail("model loaded"))
    cfg = _compose([f"input={one_second}", "checkpoint=never-loaded.pt",
                    f"output={out / 'c.jsonl'}"])  # fmt: skip
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what another surgseg process holds while it writes
    try:
        with pytest.raises(ConfigError, match="another surgseg process"):
            app.run(cfg)
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["summary", "output"])
def test_app_refuses_a_folder_as_output_file_at_once(where, make_checkpoint, one_second,
                                                     tmp_path):  # fmt: skip
    """The command: one line naming the folder and the key, exit status 2, nothing written."""
    folder = tmp_path / "folder"
    folder.mkdir()
    out = tmp_path / "out" / "c.jsonl"
    paths = {"summary": [f"output={out}", f"summary={folder}"], "output": [f"output={folder}"]}
    env = {**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)}
    proc = subprocess.run([sys.executable, "-m", "surgseg.apps.stream", f"input={one_second}",
                           f"checkpoint={make_checkpoint()}", *paths[where]],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == f"surgseg-stream: error: {folder}: {where} is a folder, not a file"
    assert proc.stdout == "" and not out.parent.exists() and not list(folder.iterdir())
    assert not (tmp_path / "folder.summary.json").exists()


def test_app_to_stdout(make_checkpoint, one_second, capsys, tmp_path):
    cfg = _compose([f"input={one_second}", f"checkpoint={make_checkpoint()}", "realtime=false",
                    f"summary={tmp_path / 's.json'}"])  # fmt: skip
    run(cfg)
    captured = capsys.readouterr()
    assert len([json.loads(line) for line in captured.out.splitlines()]) == FPS
    assert "latency ms p50" in captured.err
    assert json.loads((tmp_path / "s.json").read_text())["output"] == "-"


def test_ctrl_c_leaves_complete_outputs(make_checkpoint, tmp_path):
    video = bar_video(tmp_path / "slow.mp4", frames=40, fps=5)  # 8 s of real time
    out = tmp_path / "out" / "cues.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgseg.apps.stream", f"input={video}",
         f"checkpoint={make_checkpoint()}", f"output={out}", "masks=ffv1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_file() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert 3 <= len(lines) < 40
    assert [rec["index"] for rec in lines] == list(range(len(lines)))
    assert len(list(read_masks(out.parent / "masks.mkv"))) == len(lines)
    saved = json.loads((out.parent / "cues.summary.json").read_text())
    assert not saved["complete"] and saved["frames_emitted"] == len(lines)
    assert_counts_add_up(saved)


_BREAK_SCRIPT = """
import sys, threading
import surgseg
live = surgseg.stream(sys.argv[1], checkpoint=sys.argv[2], realtime=True)
for result in live:
    break
print("threads after break:", threading.active_count())
if sys.argv[3] == "keep-iterator":  # an iterator still alive at exit: stopped at exit
    it = iter(surgseg.stream(sys.argv[1], checkpoint=sys.argv[2], realtime=True))
    next(it)
"""


@pytest.mark.parametrize("form", ["break", "keep-iterator"])
def test_leaving_the_loop_stops_every_stage_and_exits_cleanly(form, make_checkpoint, tmp_path):
    """The form docs/streaming.md shows: the stream in a variable, ``break`` out of the loop."""
    video = bar_video(tmp_path / "long.mp4", frames=60, fps=10)
    env = {**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)}
    proc = subprocess.run([sys.executable, "-c", _BREAK_SCRIPT, str(video),
                           str(make_checkpoint()), form],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "threads after break: 1" in proc.stdout
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr
