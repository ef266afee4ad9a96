"""Process an archive's videos on a Ray cluster (``surgseg-infer … cluster=ray``).

Each worker is a Ray actor that holds one model: one per GPU with ``device=cuda`` (the actor
reserves ``num_gpus=1``), else one per ``cpus_per_worker`` CPUs. The driver hands each free
worker the longest video still waiting (file size stands in for length), so the run ends
soon after the longest video does. A worker processes a video exactly as a local run does
(``surgseg.infer.VideoJobs``), writing into the output folder, which must be a path every
node sees (a shared filesystem).

Start-up: ``RayWorkers.start`` launches the workers first (this module imports neither torch
nor the pipeline), and the driver never imports torch: the workers load the model and check
the checkpoint (``model_settings``), which is all the driver needs of it to plan. On a
machine's few cores the driver then takes none of the CPU time the workers' start needs.

Faults: a worker process that dies mid-video (killed, out of memory, node lost) is restarted
by Ray and the video redone from the start, up to ``max_retries`` times; after that the video
is recorded as failed. What the dead process left is never mistaken for a result: a video's
``run.json`` is written last, and the next attempt clears the folder first.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from surgseg.errors import ConfigError
from surgseg.jobs import Job, JobResult, record_failure
from surgseg.options import RayOptions, Workers
from surgseg.progress import progress_bar

if TYPE_CHECKING:
    from surgseg.options import PredictorSpec


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("cluster=ray needs Ray: pip install 'surgseg[ray]'") from None
    return ray


class VideoWorker:
    """A Ray actor: one model, videos one at a time. Created, it imports the pipeline; the
    model is built by ``load``, or by the first ``run`` after Ray restarted the actor."""

    def __init__(self, threads: int):
        import ray
        import torch

        from surgseg.infer import VideoJobs  # the pipeline's imports: most of a worker's start
        from surgseg.tuning import tune_process

        tune_process()  # as the surgseg commands set theirs
        torch.set_num_threads(threads)
        self.video_jobs = VideoJobs
        self.node = ray.get_runtime_context().get_node_id()
        self.spec: PredictorSpec | None = None
        self.predictor: Any = None

    def load(self, spec: PredictorSpec) -> dict[str, Any]:
        """Build the predictor of ``spec`` unless it is the one held; its
        ``PredictorSpec.model_settings``."""
        if spec != self.spec:
            self.predictor, self.spec = spec.build(), spec
        return spec.model_settings(self.predictor.meta)

    def run(self, job: Job, spec: PredictorSpec, jobs: dict[str, Any]) -> JobResult:
        """Process one video with the predictor of ``spec``; ``jobs``: ``VideoJobs``'s
        options."""
        self.load(spec)
        runner = self.video_jobs(self.predictor, worker={"ray_node": self.node}, **jobs)
        return runner(job)


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
    return min(max(1, count), jobs)


class RayWorkers:
    """The model workers of one run on the Ray cluster of ``options``: a context manager
    that connects when the first workers start and, on exit, ends them (and Ray, if it
    started it).

    Args:
        options: the cluster, worker count and size, retries.
        device: ``cpu``, or ``cuda`` for a GPU of its own per worker.
    """

    def __init__(self, options: RayOptions, *, device: str):
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"device={device} with cluster=ray: use cpu, or cuda (each "
                              "worker gets a GPU of its own)")  # fmt: skip
        self.options, self.gpus = options, int(device == "cuda")
        self.ray = _ray()
        self.started_here = False
        self.actor: Any = None  # the worker class, once connected
        self.idle: list[Any] = []  # workers without a video
        self.running: dict[Any, tuple[Any, Job]] = {}  # a video's result: (worker, video)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        for actor in [*self.idle, *(actor for actor, _ in self.running.values())]:
            self.ray.kill(actor)
        self.idle, self.running = [], {}
        if self.started_here:
            self.ray.shutdown()

    def start(self, videos: int) -> None:
        """Have workers for ``videos`` videos (``worker_count``) starting or running; the
        first call connects to the cluster (none, when there is no video)."""
        if not videos:
            return
        if self.actor is None:
            self.started_here = connect(self.options)
            self.actor = self.ray.remote(VideoWorker).options(
                num_cpus=self.options.cpus_per_worker, num_gpus=self.gpus,
                max_restarts=self.options.max_retries,
                max_task_retries=self.options.max_retries)  # fmt: skip
        missing = worker_count(self.options, gpus=self.gpus, jobs=videos) - len(self.idle)
        self.idle += [self._new() for _ in range(missing - len(self.running))]

    def model_settings(self, spec: PredictorSpec) -> dict[str, Any] | None:
        """Have every started worker load ``spec``'s model now; the first to have it answers
        with its ``PredictorSpec.model_settings``. The driver so never loads the checkpoint: a
        bad one raises here, as the worker found it. None without a started worker, or when
        the one that answered died."""
        from ray.exceptions import RayActorError, RayTaskError

        if not self.idle:
            return None
        ready, _ = self.ray.wait([actor.load.remote(spec) for actor in self.idle], num_returns=1)
        try:
            return self.ray.get(ready[0])
        except RayTaskError as exc:
            raise (exc.cause or exc) from exc
        except RayActorError:
            return None

    def _new(self) -> Any:
        return self.actor.remote(self.options.cpus_per_worker)

    def process(
        self,
        jobs: list[Job],
        *,
        predictor: PredictorSpec,
        jobs_options: dict[str, Any],
        progress: bool = True,
        on_result: Callable[[JobResult], None],
    ) -> None:
        """Process ``jobs``; ``on_result`` gets each video's outcome as it ends (in the
        caller's thread). ``jobs_options`` are ``VideoJobs``'s. Workers started beyond what
        ``jobs`` need are ended; missing ones are started."""
        from ray.exceptions import RayActorError, RayTaskError

        # A worker uses the CPUs it reserves: as many torch threads, at most as many stage
        # workers (with one CPU, the cue geometry stays in its stage's thread: no processes).
        asked, cpus = jobs_options.get("workers") or Workers(), self.options.cpus_per_worker
        workers = Workers(locate=min(asked.locate, cpus), render=min(asked.render, cpus))
        jobs_options = {**jobs_options, "workers": workers}
        self.start(len(jobs))
        want = worker_count(self.options, gpus=self.gpus, jobs=len(jobs))
        for actor in self.idle[want:]:
            self.ray.kill(actor)
        del self.idle[want:]
        for actor in self.idle:
            actor.load.remote(predictor)  # queued before the worker's first video
        waiting = deque(sorted(jobs, key=lambda j: _size(j), reverse=True))
        bar = progress_bar(total=len(jobs), desc="videos", unit="video", enabled=progress)
        try:
            while waiting or self.running:
                while self.idle and waiting:
                    actor, job = self.idle.pop(), waiting.popleft()
                    self.running[actor.run.remote(job, predictor, jobs_options)] = (actor, job)
                ready, _ = self.ray.wait(list(self.running), num_returns=1)
                actor, job = self.running.pop(ready[0])
                try:
                    result = self.ray.get(ready[0])
                except RayActorError:
                    reason = (f"{job.video}: the worker process died while processing it, "
                              f"also after {self.options.max_retries} restart(s)")  # fmt: skip
                    result = record_failure(job, reason, run_hash=jobs_options.get("run_hash"))
                    actor = self._new()
                except RayTaskError as exc:  # a bug or a write error: stop the run, say what
                    raise (exc.cause or exc) from exc
                self.idle.append(actor)
                bar.update(1)
                on_result(result)
        finally:
            bar.close()


def _size(job: Job) -> int:
    try:
        return job.video.stat().st_size
    except OSError:
        return 0
