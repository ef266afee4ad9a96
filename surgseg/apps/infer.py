"""surgseg-infer: segment recorded surgeries; see conf/infer.yaml."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from surgseg.apps import (
    CONF_DIR,
    check_bool,
    check_device,
    check_input_size,
    check_int,
    claim_output_dir,
    cli_errors,
    dataclass_from,
    launch,
)
from surgseg.archive import (
    InferSummary,
    Inputs,
    find_inputs,
    process_inputs,
    run_hash,
    unrecorded,
)
from surgseg.errors import ConfigError
from surgseg.options import CLUSTERS, CueOptions, OutputOptions, RayOptions, Workers

if TYPE_CHECKING:
    from surgseg.cluster import RayWorkers
    from surgseg.options import PredictorSpec
    from surgseg.predictor import Predictor


NOT_IN_HASH = ("cache_dir", "threads", "workspace_gb")  # engine keys that leave outputs alone


def engine_settings(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The engine's name and options from ``cfg.engine``; a TensorRT engine also gets the tip
    crops' optimization profile when ``cfg.cues.refine_tips`` is on."""
    options = OmegaConf.to_container(cfg.engine, resolve=True)
    name = options.pop("name")
    if name == "tensorrt" and OmegaConf.select(cfg, "cues.refine_tips", default=False) is True:
        from surgseg.tip_refine import crop_profile

        options["extra_profiles"] = [*(options.get("extra_profiles") or ()), crop_profile()]
    return name, options


def predictor_spec(cfg: DictConfig, *, task: str | None, check: bool = True) -> PredictorSpec:
    """The predictor named by ``cfg.checkpoint``, ``cfg.engine`` and ``cfg.device``; with a
    ``task``, the checkpoint must have been trained for it. ``check``: the device must be on
    this machine (a cluster's workers have their own)."""
    from surgseg.options import PredictorSpec

    engine, options = engine_settings(cfg)
    return PredictorSpec(Path(cfg.checkpoint), engine=engine,
                         device=check_device(cfg) if check else str(cfg.device), task=task,
                         input_size=check_input_size(cfg), engine_options=options)  # fmt: skip


def build_predictor(cfg: DictConfig, *, task: str | None) -> Predictor:
    """The predictor of ``predictor_spec``, loaded."""
    return predictor_spec(cfg, task=task).build()


def run(cfg: DictConfig) -> InferSummary:
    """Process ``cfg.input`` into ``cfg.output_dir``."""
    outputs = dataclass_from(OutputOptions, cfg.outputs, "outputs")
    cues = dataclass_from(CueOptions, cfg.cues, "cues")
    workers = dataclass_from(Workers, cfg.workers, "workers")
    batch_size = check_int(cfg, "batch_size", minimum=1)
    progress, resume = check_bool(cfg, "progress"), check_bool(cfg, "resume")
    if cfg.cluster not in CLUSTERS:
        raise ConfigError(f"cluster must be one of {CLUSTERS}, got {cfg.cluster!r}")
    on_ray = cfg.cluster == "ray"
    ray_options = dataclass_from(RayOptions, cfg.ray, "ray") if on_ray else None
    spec = predictor_spec(cfg, task=cfg.task, check=not on_ray)
    # A mistyped path: one line, nothing written. Never the run's own outputs as inputs.
    inputs = find_inputs(cfg.input, exclude=Path(cfg.output_dir))
    with ExitStack() as stack:
        cluster = None
        if ray_options is not None:
            from surgseg.cluster import RayWorkers

            cluster = stack.enter_context(RayWorkers(ray_options, device=str(cfg.device)))
            # Workers for the videos without any record start now: their imports overlap
            # this process's own (torch), its checkpoint check and its planning.
            cluster.start(unrecorded(inputs, Path(cfg.output_dir)))
        return _process(cfg, spec, inputs, outputs=outputs, cues=cues, workers=workers,
                        batch_size=batch_size, progress=progress, resume=resume,
                        cluster=cluster)  # fmt: skip


def _process(
    cfg: DictConfig,
    spec: PredictorSpec,
    inputs: Inputs,
    *,
    cluster: RayWorkers | None,
    **options: Any,
) -> InferSummary:
    # A bad checkpoint or engine setting: one line now, before the output folder is made.
    # The cluster's workers read the checkpoint and build the engine, else this process does.
    predictor: PredictorSpec | Predictor = spec
    if cluster is None:
        predictor = spec.build()
        model = spec.model_settings(predictor.meta)
        if options["cues"].refine_tips:
            from surgseg.tip_refine import check_engine

            check_engine(predictor)
    elif (model := cluster.model_settings(spec)) is None:
        from surgseg.checkpoint import load_checkpoint

        model = spec.model_settings(load_checkpoint(spec.checkpoint, task=spec.task)[1])
    output_dir = claim_output_dir(cfg.output_dir)
    engine = {k: v for k, v in spec.engine_options.items() if k not in NOT_IN_HASH}
    settings = {**model, "engine": {"name": spec.engine, **engine},
                "cues": asdict(options["cues"]), "outputs": asdict(options["outputs"])}  # fmt: skip
    record = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    return process_inputs(inputs, predictor=predictor, output_dir=output_dir, record=record,
                          run_hash=run_hash(spec.checkpoint, settings), cluster=cluster,
                          **options)  # fmt: skip


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="infer")
@cli_errors("surgseg-infer")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    first, *failures = summary.lines()
    made = [n for n in ("index.html", "videos.parquet", "cues.parquet")
            if (Path(cfg.output_dir) / n).exists()]  # fmt: skip
    print(f"surgseg-infer: {first}; outputs in {cfg.output_dir} ({', '.join(made)})")
    if warnings := summary.warnings():
        print("\n".join(warnings), file=sys.stderr)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    launch("infer")
