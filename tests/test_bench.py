"""surgseg-bench: stage-alone and end-to-end measurements, the report, the app."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from surgseg.apps import CONF_DIR
from surgseg.apps.bench import _standin, run
from surgseg.bench import (
    STAGES,
    StandInPredictor,
    bench,
    collect,
    model_flops,
    random_predictor,
    report_chart,
    report_markdown,
    write_report,
)
from surgseg.decode import read_frames
from surgseg.options import OutputOptions, Workers
from surgseg.predictor import Predictor
from surgseg.synthetic import write_clip

# Tiny tensors: intra-op threads only add waits on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return write_clip(folder, num_frames=FRAMES, width=80, height=64, fps=25, seed=2) / "video.mp4"


def test_a_second_look_at_the_tips_is_timed_as_a_stage_and_bounds_the_pipeline(
        make_checkpoint, clip, tmp_path):  # fmt: skip
    """With ``cues.refine_tips`` the refine_tips stage is timed alone (between locate and
    track), counted in the CPU bound and, a single thread, a bound of its own; the report
    gets its column; a stand-in cannot run it."""
    from surgseg.options import CueOptions

    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    cues = CueOptions(refine_tips=True, min_area=1)
    result = bench(clip, predictor=predictor, out_dir=tmp_path, batch_size=4, held_frames=6,
                   cues=cues, workers=Workers(1, 1), flops=False)  # fmt: skip
    alone, bound = result["stages_alone"], result["bound"]
    assert alone["refine_tips"]["frames"] == 6 and alone["refine_tips"]["fps"] > 0
    assert result["end_to_end"]["stages"]["refine_tips"]["frames"] == FRAMES
    core_ms = sum(alone[s]["core_ms_per_frame"] for s in (*STAGES, "refine_tips"))
    assert bound["core_ms_per_frame"] == pytest.approx(core_ms, abs=1e-2)
    limits = {"device": alone["device"]["fps"], "cpu": bound["cores"] * 1000 / core_ms,
              "refine_tips": alone["refine_tips"]["fps"]}  # fmt: skip
    assert bound["limited_by"] == min(limits, key=limits.get)
    assert bound["fps"] == pytest.approx(min(limits.values()), rel=1e-2)
    plain = bench(clip, predictor=predictor, out_dir=tmp_path, batch_size=4, held_frames=6,
                  workers=Workers(1, 1), flops=False)  # fmt: skip
    table = report_markdown([("refined", result), ("plain", plain)])
    assert "| locate fps | refine_tips fps | track fps |" in table
    assert "refine_tips ms (core-ms)" in table
    first = next(iter(read_frames(clip))).image
    standin = StandInPredictor(predictor.predict([first]), predictor.meta, fps=100)
    with pytest.raises(ValueError, match="refine_tips needs the model"):
        bench(clip, predictor=standin, out_dir=tmp_path, cues=cues)


def test_bench_measures_every_stage_and_end_to_end(make_checkpoint, clip, tmp_path):
    predictor = Predictor.from_checkpoint(make_checkpoint())
    result = bench(clip, predictor=predictor, out_dir=tmp_path, batch_size=4, held_frames=6,
                   outputs=OutputOptions(masks="ffv1"), workers=Workers(2, 2))  # fmt: skip
    alone = result["stages_alone"]
    assert set(STAGES) <= set(alone) and "engine" in alone
    assert alone["decode"]["frames"] == FRAMES
    assert all(alone[s]["frames"] == 6 for s in STAGES[1:])
    assert all(alone[s]["fps"] > 0 and alone[s]["core_ms_per_frame"] >= 0 for s in STAGES)
    assert alone["locate"]["workers"] == alone["render"]["workers"] == 2
    assert alone["device"]["stages"]["segment"]["frames"] == 6
    e2e = result["end_to_end"]
    assert e2e["frames"] == FRAMES
    assert e2e["stages"]["write"]["frames"] == FRAMES and e2e["stages"]["decode"]["items"] == 3
    bound = result["bound"]
    core_ms = sum(alone[s]["core_ms_per_frame"] for s in STAGES)
    assert bound["core_ms_per_frame"] == pytest.approx(core_ms, abs=1e-2)
    cpu = bound["cores"] * 1000 / core_ms
    assert bound["fps"] == pytest.approx(min(cpu, alone["device"]["fps"]), rel=1e-2)
    assert result["end_to_end_vs_bound"] == pytest.approx(e2e["fps"] / bound["fps"], rel=1e-2)
    assert e2e["peak_rss_mb"] > 50 and e2e["gpu_util_percent"] is None
    assert e2e["latency_ms"]["p99"] >= e2e["latency_ms"]["p50"] > 0
    assert result["compute"]["gflops_per_frame"] > 0 and result["compute"]["percent_of_roof"] > 0
    assert result["end_to_end_vs_model"] == pytest.approx(
        e2e["fps"] / alone["engine"]["fps"], rel=1e-2)
    host = result["machine"]
    assert host["gpu"] is None  # on the CPU; the GPU's name on CUDA
    assert host["cpu_cores"] == os.cpu_count() and len(host["load_avg_before"]) == 3
    assert host["software"]["torch"] == torch.__version__ and host["software"]["opencv"]
    if Path("/proc/cpuinfo").is_file():
        assert host["cpu"]  # 'model name' of /proc/cpuinfo
    assert not (tmp_path / "scratch").exists()


def test_stand_in_delivers_its_predictions_at_its_rate(make_checkpoint, clip, tmp_path):
    model = Predictor.from_checkpoint(make_checkpoint("parts"))
    frames = [f.image for f in read_frames(clip)]
    truth = model.predict(frames)
    standin = StandInPredictor(truth, model.meta, fps=100.0)
    t0 = time.perf_counter()
    got = standin.download(standin.launch(standin.upload(frames[:5])))
    got += standin.predict(frames[5:])
    assert time.perf_counter() - t0 >= FRAMES / 100.0 * 0.95
    for a, b in zip(got, truth, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
    standin.predict(frames[:3])
    wrapped = standin.predict(frames)  # predictions 3, 4, … then 0, 1, 2 again
    for i, a in enumerate(wrapped):
        np.testing.assert_array_equal(a.mask, truth[(3 + i) % FRAMES].mask)
    result = bench(clip, predictor=standin, out_dir=tmp_path, batch_size=2, held_frames=6,
                   flops=False)  # fmt: skip
    assert result["stages_alone"]["device"]["fps"] <= 100.0 * 1.02
    assert result["end_to_end"]["fps"] <= 100.0 * 1.02
    assert result["model"]["engine"] == "stand-in" and "compute" not in result


def test_flops_on_meta_match_a_real_forward(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint())
    with FlopCounterMode(display=False) as counter:
        predictor.engine.infer(torch.zeros(1, 3, *predictor.input_size))
    assert model_flops(predictor) == counter.get_total_flops() > 0


def test_random_predictor_is_seeded():
    model = {"depth": 18, "output_stride": 8, "head": "fcn", "aux_loss": False}
    a = random_predictor(model=model, input_size=(32, 40), seed=3)
    b = random_predictor(model=model, input_size=(32, 40), seed=3)
    x = torch.rand(1, 3, 32, 40)
    torch.testing.assert_close(a.engine.infer(x), b.engine.infer(x))
    assert a.meta.provenance == {"weights": "random"}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="bench", overrides=overrides)


SMALL = ["input_size=[32,40]", "max_frames=8", "held_frames=4", "clip.frames=8",
         "clip.width=80", "clip.height=64", "flops=false"]  # fmt: skip


def test_app_runs_into_its_folder_and_rebuilds_the_report(tmp_path):
    for batch in (1, 2):
        cfg = _compose([f"output_dir={tmp_path}", f"run_dir='{tmp_path}/batch_size={batch}'",
                        *SMALL, f"batch_size={batch}"])  # fmt: skip
        result = run(cfg)
        assert result["batch_size"] == batch and result["model"]["input_size"] == [32, 40]
        assert result["config"]["batch_size"] == batch
    assert (tmp_path / "clips").is_dir()
    runs = collect(tmp_path)
    assert [label for label, _ in runs] == ["batch_size=1", "batch_size=2"]
    table = (tmp_path / "bench.md").read_text()
    assert "| batch_size=1 |" in table and "| batch_size=2 |" in table
    assert "core-ms" in table
    image = cv2.imread(str(tmp_path / "bench.png"))
    assert image is not None and image.shape[0] > 100


def test_report_is_none_without_results(tmp_path):
    assert write_report(tmp_path) is None


@pytest.mark.slow
def test_hydra_multirun_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)}
    subprocess.run([sys.executable, "-m", "surgseg.apps.bench", "-m", f"output_dir={tmp_path}",
                    *SMALL, "batch_size=1,2"], check=True, env=env, cwd=tmp_path)  # fmt: skip
    labels = [label for label, _ in collect(tmp_path)]
    assert labels == ["batch_size=1,input_size=[32,40]", "batch_size=2,input_size=[32,40]"]
    assert json.loads((tmp_path / labels[1] / "bench.json").read_text())["batch_size"] == 2
    assert (tmp_path / "bench.png").is_file()


def test_app_takes_the_checkpoints_task_and_a_stand_in(make_checkpoint, tmp_path):
    parts = make_checkpoint("parts")  # the config's task stays binary
    result = run(_compose([f"output_dir={tmp_path}", f"run_dir={tmp_path}/ckpt", *SMALL,
                           f"checkpoint={parts}"]))  # fmt: skip
    assert result["model"]["task"] == "parts"
    result = run(_compose([f"output_dir={tmp_path}", f"run_dir={tmp_path}/standin", *SMALL,
                           "task=parts", "standin_fps=400"]))  # fmt: skip
    assert result["model"]["engine"] == "stand-in"
    assert result["stages_alone"]["device"]["fps"] <= 400 * 1.02
    cfg = _compose([f"output_dir={tmp_path}", *SMALL, "task=parts", "standin_fps=400"])
    video = tmp_path / "clips" / "80x64_8f_25fps_s0" / "video.mp4"
    standin = _standin(cfg, video, Predictor.from_checkpoint(parts))
    with np.load(video.parent / "masks.npz") as truth:  # the clip's ground truth, delivered
        np.testing.assert_array_equal(np.stack([p.mask for p in standin.predictions]),
                                      truth["parts"])  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size must be an integer ≥ 1, got 0"),
        ("input_size=[10,10]", "input_size must be"),
        ("input_size=null", "input_size is needed"),
        ("held_frames=0", "held_frames"),
        ("queue_size=-1", "queue_size"),
        ("max_frames=0", "max_frames"),
        ("torch_threads=0", "torch_threads"),
        ("standin_fps=0", "standin_fps must be a positive number"),
        ("standin_fps=fast", "standin_fps must be a positive number"),
        ("flops=maybe", "flops must be true or false"),
        ("task=organs", "unknown task"),
        ("clip.width=81", "even"),
        ("clip.frames=0", "clip.frames"),
        ("workers.locate=0", "workers.locate"),
        ("input=/no/such/video.mp4", "no such file"),
    ],
)
def test_app_checks_every_setting_before_any_work(tmp_path, override, message):
    """``standin_fps=500 batch_size=0`` used to crash inside the stand-in (``range()`` with a
    step of 0), and batch_size and input_size were checked only after the run folder and the
    synthetic clip were made: every setting is now checked first, and nothing is left."""
    from surgseg.errors import SurgsegError

    cfg = _compose([f"output_dir={tmp_path}/bench", f"run_dir={tmp_path}/bench/run", *SMALL,
                    "standin_fps=500", override])  # fmt: skip
    with pytest.raises(SurgsegError, match=message):
        run(cfg)
    assert not (tmp_path / "bench").exists()  # no run folder, no clip


def _fake_result(decode_fps: float = 60.0, engine_fps: float = 90.0) -> dict:
    """The fields of a bench.json the report reads."""
    stage = {"fps": 100.0, "ms_per_frame": 10.0, "core_ms_per_frame": 12.0}
    alone = {name: dict(stage) for name in (*STAGES, "engine")}
    alone["decode"]["fps"], alone["engine"]["fps"] = decode_fps, engine_fps
    return {
        "model": {"engine": "torch", "device": "cpu", "input_size": [256, 320]},
        "batch_size": 4, "workers": {"locate": 2, "render": 2}, "stages_alone": alone,
        "end_to_end": {"fps": 80.0, "latency_ms": {"p50": 40.0, "p99": 60.0},
                       "peak_rss_mb": 900.0, "peak_gpu_mem_mb": None, "gpu_util_percent": None},
        "bound": {"fps": 90.0, "limited_by": "cpu", "core_ms_per_frame": 70.0},
        "end_to_end_vs_bound": 0.889, "end_to_end_vs_model": 0.889, "cpu_cores": 2,
        "machine": {"cpu": "Some CPU @ 2.0GHz", "cpu_cores": 2, "gpu": "NVIDIA H100",
                    "load_avg_before": [0.1, 0.2, 0.3],
                    "software": {"torch": "2.9", "opencv": "4.12", "av": "14", "ffmpeg": "61.1"}},
    }  # fmt: skip


def test_report_markdown_keeps_its_paragraphs_out_of_its_tables():
    md = report_markdown([("a", _fake_result()), ("b", _fake_result(decode_fps=5000.0))])
    lines = md.splitlines()
    for before, after in itertools.pairwise(lines):
        if before.startswith("|"):  # a table row is followed by a row or a blank line
            assert after.startswith("|") or after == "", (before, after)
        if after.startswith("|") and not before.startswith("|"):
            assert before == ""  # and preceded by one
    headers = [line for line in lines if line.startswith("| run |")]
    assert len(headers) == 3  # rates, per-frame costs, machine
    assert "e2e/model" in headers[0] and "0.889" in md
    row = "| a | Some CPU @ 2.0GHz | 2 | NVIDIA H100 | 0.1/0.2/0.3 | 2.9 | 4.12 | 14 (61.1) |"
    assert row in md
    assert "| b |" in md and "5000.0" in md


def test_report_chart_cuts_the_axis_and_labels_every_bar(tmp_path):
    """A very fast stage (decode at 5,000 fps beside 80 fps end to end) is cut at 1.2 × the
    largest end-to-end or bound rate, hatched and labelled with its value; every other bar
    carries its value."""
    import matplotlib.pyplot as plt

    runs = [("slow", _fake_result()), ("fast decode", _fake_result(decode_fps=5000.0))]
    fig = report_chart(runs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert "5000.0 ▸" in labels  # the cut bar, with its value
    assert labels.count("60.0") == 1 and labels.count("80.0") == 2 and "90.0" in labels
    assert len(labels) == len(runs) * 9  # 6 stages, engine only, end to end, bound
    assert ax.get_xlim()[1] <= 1.2 * 90.0 * 1.15  # not 5,000
    assert max(p.get_width() for p in ax.patches) == pytest.approx(1.2 * 90.0)
    plt.close(fig)
    for label, result in runs:
        (tmp_path / label).mkdir()
        (tmp_path / label / "bench.json").write_text(json.dumps(result))
    md, png = write_report(tmp_path)
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 200 and md.read_text().startswith("# ")
