"""DiffInfinite's random-patch diffusion, parallel: every patch of a step in large batches.

The official sampler denoises one patch at a time at random positions and keeps a time per
latent pixel. Here every step shifts the patch grid by a random offset, covers the whole
latent with it (see :mod:`.grid`), and denoises all its patches in batches; each latent
pixel is owned by exactly one patch and advances exactly one step per step. Offsets and
noise are keyed by (seed, step, position) (see :mod:`.noise`), so the result does not
depend on the batch size or on where a run was interrupted and resumed.

Only the latent (two copies: the step's input and output) and the label mask at latent
resolution are held in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from .grid import Patch, ideal_patches, step_patches
from .guidance import GuidedDenoiser
from .noise import INITIAL_STEP, grid_offset, normal_field
from .schedule import Schedule

PREVIEW_SIDE = 512


@dataclass
class SamplerState:
    """The latent at the start of DDIM step ``step`` (``step == steps`` when finished)."""

    latent: torch.Tensor  # (C, h, w) float32, CPU
    step: int


@dataclass
class SamplerStats:
    patches_per_step: list[int] = field(default_factory=list)
    network_evals: int = 0
    seconds_per_step: list[float] = field(default_factory=list)
    ideal_patches_per_step: float = 0.0

    @property
    def mean_patches_per_step(self) -> float:
        return float(np.mean(self.patches_per_step)) if self.patches_per_step else 0.0


def auto_batch_size(unet: torch.nn.Module, patch: int, channels: int, device: torch.device, dtype: torch.dtype) -> int:
    """Network evaluations per forward call that fit in free memory (CPU: a small fixed batch)."""
    if device.type != "cuda" or not hasattr(unet, "set_attention_reduction"):
        return 16
    free, _total = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe = 2
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        unet(
            torch.zeros(probe, channels, patch, patch, device=device),
            torch.zeros(probe, dtype=torch.long, device=device),
            torch.ones(probe, 1, patch, patch, device=device),
        )
    per_eval = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    return int(max(1, min(512, 0.6 * free // per_eval)))


class RandomPatchSampler:
    """Parallel random-patch DDIM sampler over a latent of any size (>= one patch)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        channels: int,
        patch: int,
        steps: int = 250,
        omega: float = 3.0,
        eta: float = 1.0,
        seed: int = 0,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        timesteps: int = 1000,
        denoiser_class: type[GuidedDenoiser] = GuidedDenoiser,
    ) -> None:
        self.unet = unet
        self.channels, self.patch, self.seed = channels, patch, seed
        self.schedule = Schedule(steps, eta, timesteps)
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = auto_batch_size(unet, patch, channels, self.device, dtype)
        self.denoiser = denoiser_class(unet, omega, batch_size, self.device, dtype)
        self.stats = SamplerStats()

    @property
    def steps(self) -> int:
        return len(self.schedule)

    @property
    def batch_size(self) -> int:
        return self.denoiser.max_batch

    def initial_state(self, shape: tuple[int, int]) -> SamplerState:
        """Keyed Gaussian noise x_T over a latent of ``shape`` (h, w)."""
        if min(shape) < self.patch:
            raise ValueError(f"latent {shape} is smaller than one patch ({self.patch}); pad it first")
        return SamplerState(normal_field(self.seed, INITIAL_STEP, self.channels, 0, shape[0], 0, shape[1]), 0)

    def patches(self, shape: tuple[int, int], step: int) -> list[Patch]:
        return step_patches(shape, self.patch, grid_offset(self.seed, step, self.patch))

    @torch.no_grad()
    def run(
        self,
        state: SamplerState,
        labels: np.ndarray,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        checkpoint: Callable[[SamplerState], None] | None = None,
        checkpoint_every_s: float = 60.0,
        preview: Callable[[torch.Tensor], np.ndarray] | None = None,
        stop_at: int | None = None,
    ) -> SamplerState:
        """Advance ``state`` to the end of the schedule.

        ``labels``: (h, w) uint8 label mask at latent resolution. ``checkpoint`` receives the
        state at step boundaries (every ``checkpoint_every_s`` seconds, at the end, and when
        cancelled, before :class:`Cancelled` is raised). ``preview`` maps a low-resolution x0
        prediction (C, h', w') to an RGB uint8 image sent with the progress events.
        ``stop_at`` ends the run early, at the start of that step (benchmarks).
        """
        shape = tuple(state.latent.shape[-2:])
        if labels.shape != shape:
            raise ValueError(f"label mask {labels.shape} does not match the latent {shape}")
        x = state.latent.to(self.device, torch.float32)
        label_map = torch.from_numpy(np.ascontiguousarray(labels)).to(self.device)
        self.stats.ideal_patches_per_step = ideal_patches(shape, self.patch)
        stride = max(1, -(-max(shape) // PREVIEW_SIDE))
        x0_preview = torch.zeros(self.channels, -(-shape[0] // stride), -(-shape[1] // stride), device=self.device)
        last_checkpoint = time.monotonic()
        steps = self.steps
        group = max(1, self.denoiser.max_batch)

        end = steps if stop_at is None else min(stop_at, steps)
        for k in range(state.step, end):
            started = time.perf_counter()
            ddim = self.schedule[k]
            patches = self.patches(shape, k)
            noise = None
            if not ddim.final and ddim.sigma:
                noise = normal_field(self.seed, k, self.channels, 0, shape[0], 0, shape[1]).to(self.device)
            x_next = torch.empty_like(x)
            for start in range(0, len(patches), group):
                try:
                    check(cancel)
                except BaseException:
                    if checkpoint is not None:
                        checkpoint(SamplerState(x.cpu(), k))
                    raise
                batch = patches[start : start + group]
                xs = torch.stack([x[(slice(None), *p.window)] for p in batch])
                ls = torch.stack([label_map[p.window] for p in batch])
                eps = self.denoiser(xs, ddim.t, ls)
                x0 = ddim.predict_x0(xs, eps)
                for i, p in enumerate(batch):
                    ry, rx = p.own_slices
                    own = (slice(None), slice(p.own_y0, p.own_y1), slice(p.own_x0, p.own_x1))
                    x_next[own] = ddim.update(x0[i][:, ry, rx], eps[i][:, ry, rx], None if noise is None else noise[own])
                    self._preview_write(x0_preview, x0[i][:, ry, rx], p, stride)
                report(
                    progress,
                    ProgressEvent(
                        "sample",
                        k * 1000 + (1000 * (start + len(batch))) // len(patches),
                        steps * 1000,
                        f"step {k + 1}/{steps}, patch {start + len(batch)}/{len(patches)}",
                    ),
                )
            x = x_next
            self.stats.patches_per_step.append(len(patches))
            self.stats.seconds_per_step.append(time.perf_counter() - started)
            if preview is not None:
                report(
                    progress,
                    ProgressEvent("sample", (k + 1) * 1000, steps * 1000, f"step {k + 1}/{steps}", preview(x0_preview)),
                )
            now = time.monotonic()
            if checkpoint is not None and (k + 1 == steps or now - last_checkpoint >= checkpoint_every_s):
                checkpoint(SamplerState(x.cpu(), k + 1))
                last_checkpoint = now
        self.stats.network_evals = self.denoiser.count.network
        return SamplerState(x.cpu(), end)

    @staticmethod
    def _preview_write(buffer: torch.Tensor, x0: torch.Tensor, p: Patch, stride: int) -> None:
        """Copy every ``stride``-th pixel of the owned cell's x0 into the preview buffer."""
        y_first = -(-p.own_y0 // stride) * stride
        x_first = -(-p.own_x0 // stride) * stride
        if y_first >= p.own_y1 or x_first >= p.own_x1:
            return
        src = x0[:, y_first - p.own_y0 :: stride, x_first - p.own_x0 :: stride]
        buffer[:, y_first // stride : y_first // stride + src.shape[1], x_first // stride : x_first // stride + src.shape[2]] = src
