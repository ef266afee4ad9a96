"""The archive tables: cue partitions and the per-video table, read back with pandas, DuckDB
and pyarrow, on an output folder written by hand (tests/_archive_utils.py)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from surgseg import tables
from surgseg.tables import (
    CUE_SCHEMA,
    drop_cue_partition,
    find_videos,
    instrument_labels,
    partition_dir,
    write_cue_partition,
    write_videos_table,
)
from tests._archive_utils import EXPECTED, make_archive

DONE = ["b c.mp4", "day1/a.mp4"]
README_QUERY = """
select video, id, any_value(label_name) as label, sum(frame_duration_s) as seconds
from read_parquet('out/cues.parquet/*/*.parquet', hive_partitioning=true)
group by video, id order by video, id"""


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return make_archive(tmp_path)


def _write_partitions(out: Path) -> None:
    for name in DONE:
        write_cue_partition(out / name, name=name, output_dir=out)


def test_find_videos_lists_finished_and_failed_only(out: Path) -> None:
    _write_partitions(out)
    (out / "index_files").mkdir()
    (out / "index_files" / "run.json").write_text("{}")  # not a video folder
    entries = find_videos(out)
    assert [(e.name, e.status) for e in entries] == [
        ("b c.mp4", "done"),
        ("day1/a.mp4", "done"),
        ("day1/broken.mp4", "failed"),
    ]
    assert entries[1].folder == out / "day1" / "a.mp4"
    assert entries[1].marker == out / "day1" / "a.mp4" / "run.json"
    assert entries[2].record["reason"] == EXPECTED["failed_reason"]


def test_find_videos_statuses(out: Path) -> None:
    run = out / "day1" / "a.mp4" / "run.json"
    record = json.loads(run.read_text())
    del record["status"]  # written before statuses: run.json alone means done
    run.write_text(json.dumps(record))
    assert [e.name for e in find_videos(out)][:2] == DONE
    run.write_text(json.dumps({**record, "status": "running"}))
    assert [e.name for e in find_videos(out)] == ["b c.mp4", "day1/broken.mp4"]


def test_cue_partitions_read_by_pandas_duckdb_and_pyarrow(out: Path) -> None:
    _write_partitions(out)
    assert (out / "cues.parquet" / "video=day1%2Fa.mp4" / "part-0.parquet").is_file()
    assert (out / "cues.parquet" / "video=b%20c.mp4" / "part-0.parquet").is_file()

    frame = pd.read_parquet(out / "cues.parquet")
    assert frame.video.astype(str).value_counts().to_dict() == EXPECTED["rows"]
    a = frame[frame.video == "day1/a.mp4"].sort_values(["index", "id"])
    assert a["index"].tolist() == [0, 1, 1, 2, 4, 4, 4, 5]
    assert a.label_name.tolist()[:3] == ["bipolar_forceps", "bipolar_forceps", "prograsp_forceps"]
    assert a.corrupt.tolist()[-1]
    assert a.confidence.isna().tolist()[:2] == [True, False]
    first = a.iloc[0]
    assert (first.time_s, first.pts, first.entry_x, first.tip_y) == (2.0, 2000, 10.0, 12.0)
    assert (first.axis_x, first.axis_y, first.angle_deg, first.area_px) == (0.6, -0.8, -53.13, 100)

    dataset = pds.dataset(out / "cues.parquet", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.schema.remove(table.schema.get_field_index("video")) == CUE_SCHEMA
    assert sorted(set(table.column("video").to_pylist())) == DONE
    only_b = dataset.to_table(filter=pds.field("video") == "b c.mp4")
    assert only_b.column("label_name").to_pylist() == ["tool"] * 3

    rows = duckdb.sql(
        f"""select video, count(*) as n, min(label) as label, max(tip_in_view::int) as tip
            from read_parquet('{out}/cues.parquet/*/*.parquet', hive_partitioning=true)
            group by video order by video"""
    ).fetchall()
    assert rows == [("b c.mp4", 3, 1, 1), ("day1/a.mp4", 8, 1, 1)]


def test_readme_query_seconds_in_view_per_id(out: Path, monkeypatch) -> None:
    _write_partitions(out)
    monkeypatch.chdir(out.parent)  # the README's query uses a relative path
    seconds = duckdb.sql(README_QUERY).fetchall()
    got = {(video, id_): s for video, id_, _, s in seconds}
    assert got == pytest.approx(EXPECTED["seconds_per_id"])
    assert [label for *_, label, _ in seconds][:3] == [
        "tool",
        "bipolar_forceps",
        "prograsp_forceps",
    ]

    cues = pd.read_parquet("out/cues.parquet")
    in_view = cues.groupby(["video", "id"], observed=True).frame_duration_s.sum()
    assert {(str(v), i): s for (v, i), s in in_view.items()} == pytest.approx(
        EXPECTED["seconds_per_id"]
    )


def test_videos_table(out: Path) -> None:
    _write_partitions(out)
    path = write_videos_table(out, find_videos(out))
    assert path == out / "videos.parquet"
    videos = pd.read_parquet(path).set_index("video")
    assert videos.index.tolist() == ["b c.mp4", "day1/a.mp4", "day1/broken.mp4"]
    assert videos.status.tolist() == ["done", "done", "failed"]
    for name in DONE:
        for key, value in EXPECTED[name].items():
            if value is None:
                assert pd.isna(videos.loc[name, key]), (name, key)
            else:
                assert videos.loc[name, key] == pytest.approx(value), (name, key)
    a = videos.loc["day1/a.mp4"]
    assert a.presence == pytest.approx(5 / 6)
    assert (a.corrupt, a.missing, a.width, a.height, a.video_fps) == (1, 1, 96, 64, 4.0)
    assert (a.duration_s, a.processing_fps, a.wall_s, a.task) == (1.75, 3.0, 2.0, "types")
    assert a.finished == pd.Timestamp("2026-01-02T03:04:05Z")
    assert a.input.endswith("in/day1/a.mp4")
    broken = videos.loc["day1/broken.mp4"]
    assert broken.reason == EXPECTED["failed_reason"]
    assert pd.isna(broken.frames) and pd.isna(broken.presence) and pd.isna(broken.seconds_tool)

    got = duckdb.sql(
        f"select video, seconds_prograsp_forceps, tracks from '{path}' where status = 'done'"
        " order by video"
    ).fetchall()
    assert got == [("b c.mp4", None, 1), ("day1/a.mp4", 1.0, 3)]
    assert pq.read_schema(path).field("finished").type == pa.timestamp("us", tz="UTC")


def test_interrupted_write_leaves_no_partition(out: Path, monkeypatch) -> None:
    real = tables.iter_cues

    def dies_midway(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(tables, "iter_cues", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_cue_partition(out / "day1" / "a.mp4", name="day1/a.mp4", output_dir=out)
    assert not partition_dir(out, "day1/a.mp4").exists()
    assert not list((out / "day1" / "a.mp4").glob(".*partial*"))

    monkeypatch.setattr(tables, "iter_cues", real)  # an earlier partition stays until replaced
    part = write_cue_partition(out / "b c.mp4", name="b c.mp4", output_dir=out)
    before = part.read_bytes()
    monkeypatch.setattr(tables, "iter_cues", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_cue_partition(out / "b c.mp4", name="b c.mp4", output_dir=out)
    assert part.read_bytes() == before


def test_leftover_of_a_killed_write_is_invisible_and_cleaned(out: Path) -> None:
    folder = out / "day1" / "a.mp4"
    leftover = folder / ".cues.partial-99999.parquet"  # what kill -9 mid-write leaves
    leftover.write_bytes(b"PAR1 half a file")
    _write_partitions(out)
    assert not leftover.exists()
    (out / "b c.mp4" / ".cues.partial-99999.parquet").write_bytes(b"PAR1 half")
    [(n,)] = duckdb.sql(f"select count(*) from '{out}/cues.parquet/*/*.parquet'").fetchall()
    assert n == sum(EXPECTED["rows"].values())


def test_cue_partitions_and_drop(out: Path) -> None:
    assert tables.cue_partitions(out) == {}
    _write_partitions(out)
    assert tables.cue_partitions(out) == {
        name: partition_dir(out, name) / "part-0.parquet" for name in DONE
    }
    drop_cue_partition(out, "b c.mp4")
    assert not partition_dir(out, "b c.mp4").exists()
    drop_cue_partition(out, "b c.mp4")  # nothing to drop: no error
    assert list(tables.cue_partitions(out)) == ["day1/a.mp4"]
    frame = pd.read_parquet(out / "cues.parquet")
    assert set(frame.video.astype(str)) == {"day1/a.mp4"}


def test_edge_cases(tmp_path: Path) -> None:
    # A video without instruments, and labels given in place of run.json.
    folder = tmp_path / "out" / "empty.mp4"
    folder.mkdir(parents=True)
    (folder / "cues.jsonl").write_text(
        '{"index": 0, "pts": null, "time_s": 0.0, "corrupt": false, "gap": 0, "instruments": []}'
    )
    labels = instrument_labels("parts", ["background", "shaft"])
    part = write_cue_partition(folder, name="empty.mp4", output_dir=tmp_path / "out", labels=labels)
    assert pq.read_table(part).num_rows == 0
    assert pq.read_schema(part) == CUE_SCHEMA
    assert instrument_labels("parts", ["background", "shaft", "wrist"]) == {1: "tool"}
    assert instrument_labels("types", ["background", "a", "b"]) == {1: "a", 2: "b"}
    (folder / "cues.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match=r"cues\.jsonl"):
        write_cue_partition(folder, name="empty.mp4", output_dir=tmp_path / "out")
    assert part.is_file()
