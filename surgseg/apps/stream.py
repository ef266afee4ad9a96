"""surgseg-stream: play a video as a live feed, emit each frame's cues when ready; see
conf/stream.yaml and docs/streaming.md."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from surgseg.apps import (
    CONF_DIR,
    check_bool,
    check_int,
    claim_output_dir,
    cli_errors,
    dataclass_from,
    launch,
)
from surgseg.apps.infer import build_predictor
from surgseg.errors import ConfigError
from surgseg.options import MASK_FORMATS, CueOptions, OutputOptions, Workers

if TYPE_CHECKING:
    from surgseg.live import LiveStream
    from surgseg.stages import Outputs


def _paths(cfg: DictConfig) -> tuple[Path | None, Path | None, Path | None]:
    """(cues file or None for stdout, summary JSON or None, masks folder or None), each
    checked by ``_check_paths``."""
    output = None if cfg.output == "-" else Path(cfg.output)
    summary = Path(cfg.summary) if cfg.summary else None
    if summary is None and output is not None:
        summary = output.with_name(output.stem + ".summary.json")
    masks_dir = None
    if cfg.masks is not None:
        if cfg.masks not in MASK_FORMATS:
            raise ConfigError(f"masks must be null or one of {MASK_FORMATS}, got {cfg.masks!r}")
        if cfg.masks_dir is None and output is None:
            raise ConfigError("masks_dir is needed when output is - (stdout)")
        masks_dir = Path(cfg.masks_dir) if cfg.masks_dir else output.parent
    _check_paths(cfg, output, summary, masks_dir)
    return output, summary, masks_dir


def _check_folder(folder: Path, path: Path, key: str) -> None:
    """ConfigError, naming ``path`` and ``key``, unless ``folder`` (``path`` itself or the
    folder that holds it) is a folder or can be made, and can be written into; nothing is
    made or written (``claim_output_dir`` does that, and tries a write, later)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        if existing == path:
            raise ConfigError(f"{key} is a file, not a folder", path)
        raise ConfigError(f"{key} cannot be written: {existing} is a file, not a folder", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "a read-only file system" if read_only else "no permission to write"
        raise ConfigError(f"{key} cannot be written: {existing}: {why}", path)


def _check_paths(cfg: DictConfig, output: Path | None, summary: Path | None,
                 masks_dir: Path | None) -> None:  # fmt: skip
    """Every path the stream writes, checked before the model is loaded or the input opened
    (a mistake found only at the end would cost the whole video): a file that names an
    existing folder, a folder that names an existing file, a folder that cannot be made or
    written, two outputs on one file or on the input video are one line naming the path and
    its key. Nothing is made or written here."""
    files: list[tuple[Path, str]] = []  # (a file the stream writes, its key)
    if output is not None:
        files.append((output, "output"))
    if summary is not None:
        files.append((summary, "summary" if cfg.summary else "summary (null: next to output)"))
    if masks_dir is not None:
        _check_folder(masks_dir, masks_dir, "masks_dir")
        if cfg.masks == "png":  # masks_dir/masks/000123.png
            _check_folder(masks_dir / "masks", masks_dir / "masks", "masks")
        else:  # ffv1: masks_dir/masks.mkv
            files.append((masks_dir / "masks.mkv", "masks"))
    written: dict[Path, str] = {}
    video = Path(cfg.input).resolve()
    for path, key in files:
        if path.is_dir():
            raise ConfigError(f"{key} is a folder, not a file", path)
        _check_folder(path.parent, path, key)
        where = path.resolve()
        if where == video:
            raise ConfigError(f"{key} is the input video", path)
        if where in written:
            raise ConfigError(f"{key} and {written[where]} name the same file", path)
        written[where] = key


@contextmanager
def _ctrl_c_stops(event: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``event``: the stream ends after the frames in hand, and every
    output closes normally. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first_ctrl_c(signum: int, frame: object) -> None:
        event.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _emit(live: LiveStream, cues_to: Path | str, masks_fmt: str | None,
          masks_dir: Path | None) -> None:  # fmt: skip
    """Write every result as it comes, through the stage module's outputs (``cues_to``: the
    cues file, or ``-`` for stdout); the outputs are opened at the first result, once the
    video's format is known, and closed (not aborted) on Ctrl-C."""
    from surgseg.stages import open_outputs

    def opened() -> Outputs:
        # masks.mkv holds the emitted frames in order, each at its frame's pts
        return open_outputs(masks_dir, info=live.info, cues=cues_to,
                            options=OutputOptions(masks=masks_fmt, overlay=False),
                            class_names=live.predictor.meta.class_names)  # fmt: skip

    outputs = None
    try:
        for result in live:
            outputs = outputs or opened()
            latency = {"latency_ms": round(1000 * result.latency_s, 2)}
            outputs.write(result.frame, outputs.render(result.frame, result.prediction,
                                                       result.cues, extra=latency))  # fmt: skip
        outputs = outputs or opened()  # no frame: the cues file is made all the same
    except KeyboardInterrupt:
        live.close()
    except BaseException:
        live.close()
        if outputs is not None:
            outputs.abort()
        raise
    if outputs is not None:
        outputs.close()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Stream ``cfg.input``; return the summary (also written as JSON and to stderr).

    Raises KeyboardInterrupt after Ctrl-C, once the outputs are closed and the summary written.
    """
    from surgseg.atomic import write_json
    from surgseg.decode import damage_note, probe
    from surgseg.live import stream

    output, summary_path, masks_dir = _paths(cfg)  # checked before the model loads
    folders = [(output and output.parent, "output"), (masks_dir, "masks_dir"),
               (summary_path and summary_path.parent, "summary")]
    folders = [(folder, key) for folder, key in folders if folder is not None]
    for folder, key in folders:
        if folder.is_dir():  # there already: locked now (another process writing into it is
            claim_output_dir(folder, key=key)  # one line at once); the others made below
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    queue_size = check_int(cfg, "queue_size", minimum=1)
    realtime = check_bool(cfg, "realtime")
    predictor = build_predictor(cfg, task=cfg.task)
    live = stream(cfg.input, predictor=predictor, realtime=realtime, drop=cfg.drop,
                  queue_size=queue_size, max_age=cfg.max_age, cues=cues,
                  workers=workers)  # fmt: skip
    probe(cfg.input)  # a file that is not a video: one line, before any folder is made
    for folder, key in folders:
        claim_output_dir(folder, key=key)
    with _ctrl_c_stops(live.stop):
        _emit(live, output if output is not None else "-", cfg.masks, masks_dir)
    summary = {**live.summary(), "output": str(output) if output else "-"}
    lat = summary["latency_ms"]
    cut = summary["frames_in_flight"]
    print(
        f"surgseg-stream: {summary['frames_emitted']} of {summary['frames_released']} frames "
        f"emitted, {summary['frames_dropped']} dropped"
        + (f", {cut} in flight at the stop" if cut else "")
        + f"; latency ms p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']}",
        file=sys.stderr,
    )
    if note := damage_note(summary["decode"] or {}):
        print(f"surgseg-stream: {cfg.input}: {note}", file=sys.stderr)
    if summary_path is not None:
        write_json(summary_path, summary)
    if not summary["complete"]:
        raise KeyboardInterrupt
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="stream")
@cli_errors("surgseg-stream")
def main(cfg: DictConfig) -> None:
    run(cfg)



if __name__ == "__main__":
    launch("stream")
