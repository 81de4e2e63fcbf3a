"""Many slides at once: one :func:`~napari_diffinfinite.engine.run_generate` per dask task.

Slides are independent, so a dataset is embarrassingly parallel: :func:`generate_many` sends
every :class:`~napari_diffinfinite.engine.GenerateRequest` to a dask.distributed cluster as
one task, one slide per worker at a time (one GPU per worker through the worker resource
``GPU`` when GPUs are visible). Without a scheduler address a ``LocalCluster`` is started on
this machine, one worker per GPU (or ``workers`` CPU workers).

Every task resumes its own store (``resume=True``): a finished store is returned as it is, and
a store left behind by a worker that died mid-slide is continued from its last saved state by
the retried task, giving the same slide as an uninterrupted run. A slide that fails for a
user-caused reason (a bad mask, settings that do not fit its store) fails alone, with the
engine's message; the others go on. Unexpected errors are retried ``retries`` times.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DiffInfiniteError, SettingsError
from .progress import CancelToken, ProgressCallback, ProgressEvent, check, report

if TYPE_CHECKING:
    from .engine import GenerateRequest

log = logging.getLogger(__name__)

#: The dask worker resource a slide task asks for when GPUs are used (one per task).
GPU_RESOURCE = "GPU"


@dataclass(frozen=True)
class SlideOutcome:
    """What became of one requested slide: its store path, and the error message if it failed."""

    out: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class FleetReport:
    """The outcome of every requested slide, in request order."""

    outcomes: list[SlideOutcome] = field(default_factory=list)

    @property
    def done(self) -> list[Path]:
        return [o.out for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def summary(self) -> str:
        lines = [f"{len(self.done)} of {len(self.outcomes)} slides done, {len(self.failed)} failed"]
        lines += [f"  failed: {o.out}: {o.error}" for o in self.failed]
        return "\n".join(lines)


def _worker_device(device: str | None) -> str | None:
    """The device of this worker's slide: its own GPU under a LocalCluster with several GPUs.

    An explicit device other than plain "cuda"/"auto" is kept. On a worker whose name is its
    index (LocalCluster), GPU ``index % count`` is used; elsewhere (one GPU per job, e.g. SLURM)
    the default device.
    """
    import torch

    if device not in (None, "auto", "cuda") or not torch.cuda.is_available():
        return device
    try:
        from distributed import get_worker

        index = int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


def generate_one(request: GenerateRequest) -> SlideOutcome:
    """Run one slide to completion (resuming its store); user-caused failures are returned, not raised.

    This is the dask task. Exceptions that are not :class:`DiffInfiniteError` (a crash, an
    out-of-memory error) propagate so that dask retries the task, which resumes the store.
    """
    from . import engine
    from .threads import configure_torch_threads

    configure_torch_threads()
    settings = replace(request.settings, device=_worker_device(request.settings.device))
    request = replace(request, settings=settings, resume=not request.overwrite)
    try:
        engine.run_generate(request).close()
    except DiffInfiniteError as exc:
        return SlideOutcome(request.path, str(exc))
    return SlideOutcome(request.path)


def check_requests(requests: Sequence[GenerateRequest]) -> list[str | None]:
    """Validate every request without loading anything: a message per request (None = fine).

    Two requests writing the same store are refused; each request is checked as its task will
    run it (resuming an existing store).
    """
    from . import engine

    seen: dict[Path, int] = {}
    problems: list[str | None] = []
    for i, request in enumerate(requests):
        path = request.path.resolve()
        if path in seen:
            problems.append(f"writes {request.path}, as request {seen[path] + 1} does; give every slide its own out")
            continue
        seen[path] = i
        try:
            engine.validate(replace(request, resume=not request.overwrite))
        except DiffInfiniteError as exc:
            problems.append(str(exc))
        else:
            problems.append(None)
    return problems


def _local_cluster(workers: int | None):
    """A LocalCluster with one single-threaded worker process per GPU (or ``workers`` CPU workers)."""
    import torch
    from distributed import LocalCluster

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = workers or gpus or 1
    resources = {GPU_RESOURCE: 1} if gpus else None
    return LocalCluster(
        n_workers=count, threads_per_worker=1, processes=True, resources=resources, dashboard_address=None
    ), bool(gpus)


def generate_many(
    requests: Sequence[GenerateRequest],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FleetReport:
    """Generate every request's slide on a dask cluster; returns what became of each.

    ``scheduler``: the address of a running dask scheduler (``tcp://host:8786``; SLURM through
    dask-jobqueue, see docs/scale.md); None starts a LocalCluster with one worker per GPU, or
    ``workers`` CPU workers. Every request is validated before any task starts; one that fails
    validation is reported in its outcome and not run, and the others go on. Progress: stage
    "slides", one event per finished slide. ``cancel`` stops waiting and cancels pending tasks
    (running slides save their state when their worker stops; rerun to resume them).
    """
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SettingsError(
            "generating many slides needs dask.distributed: pip install 'napari-diffinfinite[cluster]'"
        ) from None
    if retries < 0:
        raise SettingsError(f"retries must be 0 or more, got {retries}")
    if workers is not None and workers < 1:
        raise SettingsError(f"workers must be at least 1, got {workers}")
    problems = check_requests(requests)
    outcomes: list[SlideOutcome | None] = [
        None if problem is None else SlideOutcome(request.path, problem) for request, problem in zip(requests, problems)
    ]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    total = len(requests)
    finished = total - len(todo)
    report(progress, ProgressEvent("slides", finished, total, f"{finished} of {total} slides"))
    if todo:
        cluster, gpus = (None, False) if scheduler else _local_cluster(workers)
        client = Client(scheduler if scheduler else cluster)
        try:
            if scheduler:
                gpus = any(
                    GPU_RESOURCE in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values()
                )
            resources = {GPU_RESOURCE: 1} if gpus else None
            futures = {
                client.submit(generate_one, requests[i], key=f"slide-{i}-{os.getpid()}", retries=retries,
                              resources=resources, pure=False): i
                for i in todo
            }  # fmt: skip
            for future in as_completed(futures):
                i = futures[future]
                try:
                    outcomes[i] = future.result()
                except Exception as exc:  # noqa: BLE001 - a slide's crash is reported, the others go on
                    outcomes[i] = SlideOutcome(requests[i].path, f"{type(exc).__name__}: {exc}")
                finished += 1
                report(progress, ProgressEvent("slides", finished, total, f"{finished} of {total} slides"))
                check(cancel)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return FleetReport([o for o in outcomes if o is not None])
