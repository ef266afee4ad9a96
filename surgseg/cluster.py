"""Process an archive's videos on a Ray cluster (``surgseg-infer … cluster=ray``).

Each worker is a Ray actor that holds one model: one per GPU with ``device=cuda`` (the actor
reserves ``num_gpus=1``), else one per ``cpus_per_worker`` CPUs. The driver hands each free
worker the longest video still waiting (file size stands in for length), so the run ends
soon after the longest video does. A worker processes a video exactly as a local run does
(``surgseg.infer.VideoJobs``), writing into the output folder, which must be a path every
node sees (a shared filesystem).

Faults: a worker process that dies mid-video (killed, out of memory, node lost) is restarted
by Ray and the video redone from the start, up to ``max_retries`` times; after that the video
is recorded as failed. What the dead process left is never mistaken for a result: a video's
``run.json`` is written last, and the next attempt clears the folder first.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from surgseg.errors import ConfigError
from surgseg.infer import Job, JobResult, VideoJobs, record_failure
from surgseg.options import RayOptions, Workers
from surgseg.predictor import PredictorSpec
from surgseg.progress import progress_bar
from surgseg.tuning import tune_process


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("cluster=ray needs Ray: pip install 'surgseg[ray]'") from None
    return ray


class VideoWorker:
    """A Ray actor: one model, videos one at a time."""

    def __init__(self, predictor: PredictorSpec, jobs: dict[str, Any], threads: int):
        import ray
        import torch

        tune_process()  # as the surgseg commands set theirs
        torch.set_num_threads(threads)
        node = ray.get_runtime_context().get_node_id()
        self.jobs = VideoJobs(predictor.build(), worker={"ray_node": node}, **jobs)

    def run(self, job: Job) -> JobResult:
        """Process one video."""
        return self.jobs(job)


def connect(options: RayOptions) -> bool:
    """Connect to the cluster of ``options.address`` unless this process already is; True
    when this call started the connection (and should end it)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"ray.address={where}: cannot start or join Ray: {first}") from None
    return True


def worker_count(options: RayOptions, *, gpus: int, jobs: int) -> int:
    """How many model workers to start: as asked, or one per GPU (``gpus`` 1) or per
    ``cpus_per_worker`` CPUs of the cluster; never more than there are videos."""
    resources = _ray().cluster_resources()
    if options.workers != "auto":
        count = options.workers
    elif gpus:
        count = int(resources.get("GPU", 0))
        if count == 0:
            raise ConfigError("device=cuda with cluster=ray: the Ray cluster has no GPU")
    else:
        count = max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))
    return max(1, min(count, jobs))


def process_on_ray(
    jobs: list[Job],
    *,
    predictor: PredictorSpec,
    jobs_options: dict[str, Any],
    options: RayOptions,
    progress: bool = True,
    on_result: Callable[[JobResult], None],
) -> None:
    """Process ``jobs`` on the Ray cluster of ``options``; ``on_result`` gets each video's
    outcome as it ends (in the caller's thread). ``jobs_options`` are ``VideoJobs``'s."""
    ray = _ray()
    from ray.exceptions import RayActorError, RayTaskError

    if predictor.device not in ("cpu", "cuda"):
        raise ConfigError(f"device={predictor.device} with cluster=ray: use cpu, or cuda (each "
                          "worker gets a GPU of its own)")  # fmt: skip
    gpus = int(predictor.device == "cuda")
    # A worker uses the CPUs it reserves: as many torch threads, at most as many stage workers
    # (with one CPU, the cue geometry stays in its stage's thread: no worker processes).
    asked = jobs_options.get("workers") or Workers()
    cpus = options.cpus_per_worker
    jobs_options = {**jobs_options, "workers": Workers(locate=min(asked.locate, cpus),
                                                       render=min(asked.render, cpus))}  # fmt: skip
    started_here = connect(options)
    worker = ray.remote(VideoWorker).options(
        num_cpus=options.cpus_per_worker, num_gpus=gpus, max_restarts=options.max_retries,
        max_task_retries=options.max_retries)  # fmt: skip

    def start() -> Any:
        return worker.remote(predictor, jobs_options, options.cpus_per_worker)

    waiting = deque(sorted(jobs, key=lambda j: _size(j), reverse=True))
    idle = [start() for _ in range(worker_count(options, gpus=gpus, jobs=len(jobs)))]
    running: dict[Any, tuple[Any, Job]] = {}
    bar = progress_bar(total=len(jobs), desc="videos", unit="video", enabled=progress)
    try:
        while waiting or running:
            while idle and waiting:
                actor, job = idle.pop(), waiting.popleft()
                running[actor.run.remote(job)] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayActorError:
                reason = (f"{job.video}: the worker process died while processing it, "
                          f"also after {options.max_retries} restart(s)")  # fmt: skip
                result = record_failure(job, reason, run_hash=jobs_options.get("run_hash"))
                actor = start()
            except RayTaskError as exc:  # a bug or a write error: stop the run, say what
                raise (exc.cause or exc) from exc
            idle.append(actor)
            bar.update(1)
            on_result(result)
    finally:
        bar.close()
        for actor in [*idle, *(a for a, _ in running.values())]:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _size(job: Job) -> int:
    try:
        return job.video.stat().st_size
    except OSError:
        return 0
