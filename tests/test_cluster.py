"""surgseg-infer on a real Ray cluster: this machine's cores in the default suite, a two-node
cluster started with ``ray start`` in a slow test."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from _video_utils import write_text, write_video
from hydra import compose, initialize_config_dir

from surgseg.apps import CONF_DIR
from surgseg.apps.infer import run
from surgseg.synthetic import write_clip

ray = pytest.importorskip("ray")


def _cfg(**values):
    overrides = [f"{k}={v}" for k, v in values.items()]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("infer", overrides=["progress=false", "cluster=ray", *overrides])


@pytest.fixture(scope="module")
def local_cluster():
    """Ray on this machine's cores, shared by the tests of this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _workers(out: Path) -> set[int]:
    return {json.loads(p.read_text())["worker"]["pid"] for p in out.rglob("run.json")}


def test_videos_spread_over_workers_same_outputs_as_local_then_resume(local_cluster,
                                                                      make_checkpoint,
                                                                      tmp_path):  # fmt: skip
    archive = tmp_path / "archive"
    for i in range(4):
        write_video(archive / f"case{i}", fmt="h264-mp4", frames=6)
    write_text(archive / "broken.mp4")
    ckpt, out = make_checkpoint("parts"), tmp_path / "out"

    summary = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out, **{"ray.workers": 2}))
    assert sorted(summary.done) == [out / f"case{i}.mp4" for i in range(4)]
    assert summary.frames == 24 and summary.skipped == []
    assert [v for v, _ in summary.failed] == [archive / "broken.mp4"]
    failed = json.loads((out / "broken.mp4/failed.json").read_text())
    assert "not a readable video" in failed["reason"]
    assert len(_workers(out)) == 2  # both workers got videos
    assert all(pid != os.getpid() for pid in _workers(out))

    # The same outputs as processing here, one video after another.
    local = tmp_path / "local"
    run(_cfg(input=archive / "case0.mp4", checkpoint=ckpt, output_dir=local, cluster="local"))
    here, there = (folder / "case0.mp4/cues.jsonl" for folder in (local, out))
    assert here.read_text() == there.read_text()

    again = run(_cfg(input=archive, checkpoint=ckpt, output_dir=out))
    assert again.done == [] and len(again.skipped) == 4 and len(again.failed) == 1


def _worker_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("VideoWorker" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_a_worker_killed_mid_video_has_the_video_redone(local_cluster, make_checkpoint,
                                                        tmp_path):  # fmt: skip
    clip = write_clip(tmp_path / "in" / "long", num_frames=60, width=320, height=256, seed=5)
    out = tmp_path / "out"
    cfg = _cfg(input=tmp_path / "in", checkpoint=make_checkpoint(), output_dir=out,
               batch_size=1, **{"ray.workers": 1})  # fmt: skip
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=run(cfg)))
    thread.start()
    cues = out / "long/video.mp4/cues.jsonl"
    deadline = time.monotonic() + 180
    while not (cues.exists() and cues.read_text().count("\n") >= 3):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    (victim,) = _worker_processes()
    victim.send_signal(signal.SIGKILL)
    thread.join(timeout=300)

    summary = result["summary"]
    folder = out / "long/video.mp4"
    assert summary.done == [folder] and summary.failed == [] and summary.frames == 60
    record = json.loads((folder / "run.json").read_text())
    assert record["worker"]["pid"] != victim.pid and record["frames"]["processed"] == 60
    assert len((folder / "cues.jsonl").read_text().splitlines()) == 60
    assert not list(out.rglob(".*partial*"))
    assert clip.is_dir()


def test_a_worker_that_keeps_dying_fails_its_video_once(local_cluster, make_checkpoint,
                                                        tmp_path, monkeypatch):  # fmt: skip
    """A video that kills its worker every time is recorded as failed after max_retries."""
    write_video(tmp_path / "in" / "poison", fmt="h264-mp4", frames=3)
    out = tmp_path / "out"
    from surgseg import cluster

    class Dying(cluster.VideoWorker):
        def run(self, job, spec, jobs):
            os._exit(1)

    monkeypatch.setattr(cluster, "VideoWorker", Dying)
    summary = run(_cfg(input=tmp_path / "in", checkpoint=make_checkpoint(), output_dir=out,
                       **{"ray.workers": 1, "ray.max_retries": 1}))  # fmt: skip
    ((video, reason),) = summary.failed
    assert video.name == "poison.mp4" and "also after 1 restart(s)" in reason
    assert json.loads((out / "poison.mp4/failed.json").read_text())["reason"] == reason
    again = run(_cfg(input=tmp_path / "in", checkpoint=make_checkpoint(), output_dir=out,
                     **{"ray.workers": 1, "ray.max_retries": 1}))  # fmt: skip
    assert "an earlier run" in again.failed[0][1]


def test_the_workers_read_the_checkpoint_not_the_driver(local_cluster, make_checkpoint,
                                                        tmp_path, monkeypatch):  # fmt: skip
    """The workers start first and load the model; the driver takes what it needs of it from
    them and never loads the checkpoint itself, unless no worker is started (a run with
    nothing left to do starts none)."""
    from surgseg import checkpoint, cluster

    write_video(tmp_path / "in" / "a", fmt="h264-mp4", frames=3)
    events = []
    start, load = cluster.RayWorkers.start, checkpoint.load_checkpoint

    def logged_start(self, videos):
        events.append(("start", videos))
        start(self, videos)

    def logged_load(*args, **kwargs):
        events.append(("load_checkpoint",))
        return load(*args, **kwargs)

    monkeypatch.setattr(cluster.RayWorkers, "start", logged_start)
    monkeypatch.setattr(checkpoint, "load_checkpoint", logged_load)
    cfg = _cfg(input=tmp_path / "in", checkpoint=make_checkpoint(), output_dir=tmp_path / "out",
               **{"ray.workers": 2})  # fmt: skip
    assert run(cfg).frames == 3
    assert events[0] == ("start", 1)  # one video: one worker
    assert ("load_checkpoint",) not in events
    local = tmp_path / "local"
    run(_cfg(input=tmp_path / "in", checkpoint=cfg.checkpoint, output_dir=local, cluster="local"))
    hashes = [json.loads((out / "a.mp4/run.json").read_text())["run_hash"]
              for out in (tmp_path / "out", local)]  # fmt: skip
    assert hashes[0] == hashes[1]  # the same settings, read by a worker or here
    events.clear()
    assert run(cfg).skipped == [tmp_path / "out" / "a.mp4"]
    assert events == [("start", 0), ("load_checkpoint",)]


def test_a_bad_checkpoint_is_one_line_from_the_workers(local_cluster, make_checkpoint,
                                                       tmp_path):  # fmt: skip
    from surgseg.errors import CheckpointError

    write_video(tmp_path / "in" / "a", fmt="h264-mp4", frames=3)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    parts = make_checkpoint("parts")
    for ckpt, task, message in ((broken, "null", "not a readable checkpoint"),
                                (parts, "binary", "trained for task 'parts'")):  # fmt: skip
        with pytest.raises(CheckpointError, match=message) as caught:
            run(_cfg(input=tmp_path / "in", checkpoint=ckpt, output_dir=tmp_path / "out",
                     task=task))  # fmt: skip
        assert str(ckpt) in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing claimed for a run that cannot start


def test_the_driver_runs_without_torch():
    """Every module the driver of a cluster run uses imports neither torch nor the pipeline
    (else the workers' start would wait for the driver's imports, on the same cores)."""
    code = ("import sys, surgseg.apps.infer, surgseg.archive, surgseg.cluster, surgseg.options, "
            "surgseg.tables, surgseg.report; "
            "print(sorted(m for m in ('torch', 'surgseg.infer') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_two_nodes_started_with_ray_start(make_checkpoint, tmp_path):
    """A head and a second node on this machine, joined as a user would, each with one CPU."""
    # A short folder: Ray's sockets live under it, and a socket path has at most 107 bytes.
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "RAY_AUTH_MODE": "token"}
    port = "6390"
    bin_dir = Path(sys.executable).parent
    start = [str(bin_dir / "ray"), "start", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([*start, "--head", f"--port={port}", "--include-dashboard=false"],
                   env=env, check=True, capture_output=True, timeout=180)  # fmt: skip
    try:
        subprocess.run([*start, f"--address=127.0.0.1:{port}"], env=env, check=True,
                       capture_output=True, timeout=180)  # fmt: skip
        archive = tmp_path / "archive"
        for i in range(4):
            write_video(archive / f"case{i}", fmt="h264-mp4", frames=6)
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "surgseg.apps.infer", f"input={archive}",
             f"checkpoint={make_checkpoint()}", f"output_dir={out}", "progress=false",
             "cluster=ray", "ray.address=auto"],
            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "4 done, 0 skipped" in proc.stdout
        nodes = {json.loads(p.read_text())["worker"]["ray_node"] for p in out.rglob("run.json")}
        assert len(nodes) == 2
    finally:
        subprocess.run([str(bin_dir / "ray"), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)  # fmt: skip
        shutil.rmtree(ray_dir, ignore_errors=True)
