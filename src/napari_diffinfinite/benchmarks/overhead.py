"""Sampler overhead: milliseconds of the sampler's own work per patch, network excluded.

The UNet is replaced by a network that costs nothing (it returns a zero tensor without
computing anything), so what is timed is everything the sampler does around the network:
grid, keyed noise, gathering windows and label masks, guidance compositing, the DDIM update
and writing owned cells. Latent only; nothing is decoded.

The timed steps are taken from the middle of a 250-step schedule, where cells have context as
at almost every step of a run (the first 8 of 250 have none; see
:func:`~napari_diffinfinite.sampling.sampler.has_context`). Only the sampling steps are timed;
the run's one-time setup (copying the latent into its two buffers) is ``setup_ms``. ``ms_per_patch`` is wall time; ``cpu_ms_per_patch`` is the process's CPU time, which on a
machine shared with other jobs measures the work itself (run with ``OMP_NUM_THREADS=1``
for a single-core figure; with more threads it adds up their time).
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..sampling.canvas import LatentCanvas
from ..sampling.sampler import RandomPatchSampler
from .sampler import bench_labels

OVERHEAD_SIZES = (4096, 8192, 16384)


class ZeroCostNetwork(nn.Module):
    """A stand-in UNet whose prediction is zero noise, at no cost.

    It returns rows of one zero buffer allocated once: real memory the sampler reads as it
    would read a network's output, but nothing is computed or written per call.
    """

    def __init__(self) -> None:
        super().__init__()
        self._zeros = torch.zeros(0)

    def forward(self, x: torch.Tensor, time: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self._zeros.numel() < x.numel() or self._zeros.device != x.device:
            self._zeros = torch.zeros(x.numel(), device=x.device)
        return self._zeros[: x.numel()].view(x.shape)


def measure_overhead(
    size: int,
    *,
    steps: int = 2,
    patch: int = 64,
    channels: int = 4,
    scale: int = 8,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time ``steps`` sampler steps on a ``size`` px square slide (latent ``size // scale``).

    Only the steps are timed (``RandomPatchSampler._step``, as ``run`` calls them); setting up
    the run (the latent buffers and label map, once per run) is reported apart, as ``setup_ms``.
    """
    latent = (size // scale, size // scale)
    labels = bench_labels(latent)
    sampler = RandomPatchSampler(
        ZeroCostNetwork(), channels=channels, patch=patch, steps=250, omega=3.0, seed=0, batch_size=batch_size,
        device=device,
    )  # fmt: skip
    warm = (patch * 2, patch * 2)  # one-time costs (allocator, kernels) are not timed
    sampler.run(sampler.initial_state(warm), bench_labels(warm), stop_at=1)
    state = sampler.initial_state(latent)
    setup_started = time.perf_counter()
    canvas = LatentCanvas(state.latent, labels, sampler.device)
    setup_seconds = time.perf_counter() - setup_started
    num_labels = int(labels.max()) + 1
    patches = 0
    first = len(sampler.schedule) // 2
    started, cpu_started = time.perf_counter(), time.process_time()
    for k in range(first, first + steps):
        grid = sampler.grid(latent, k)
        geometry = np.stack([grid.window_y, grid.window_x, grid.own_y0, grid.own_y1, grid.own_x0, grid.own_x1])
        sampler._step(canvas, geometry, k, num_labels)  # noqa: SLF001 - the step is what is timed
        patches += len(grid)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    return {
        "size": size,
        "latent": list(latent),
        "patch": patch,
        "steps_timed": steps,
        "first_step_timed": first,
        "context": sampler.context(first),
        "patches": patches,
        "patches_per_step": patches / steps,
        "ms_per_patch": 1000 * seconds / patches,
        "cpu_ms_per_patch": 1000 * cpu_seconds / patches,
        "ms_per_step": 1000 * seconds / steps,
        "setup_ms": 1000 * setup_seconds,
        "batch_size": batch_size,
    }


def run_overhead(sizes: list[int] | tuple[int, ...] = OVERHEAD_SIZES, *, steps: int = 2, device: str = "cpu",
                 batch_size: int = 16) -> dict[str, Any]:  # fmt: skip
    """``{"sizes": [{"size": ..., "ms_per_patch": ...}, ...], "machine": {...}}`` for each slide size."""
    return {
        "sizes": [measure_overhead(s, steps=steps, device=device, batch_size=batch_size) for s in sizes],
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },  # fmt: skip
    }
