"""The official one-patch-at-a-time random-patch loop, as a baseline for benchmarks.

It follows the scheduling of the official ``RandomDiffusion.__call__``: keep a time per
latent pixel; repeatedly pick a random pixel among those with the smallest time, centre a
patch on it (clamped inside the canvas), and if the patch is not finished, denoise it at
its smallest time and advance the pixels that were at that time. Every call runs at batch
size 1, with a conditional and an unconditional network pass for every label in the patch
(``forward_with_cond_scale`` per label). Pixels ahead of the patch's time keep their value.

Used to measure what the parallel sampler saves, on the same network and schedule.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .noise import INITIAL_STEP, normal_field, numpy_rng
from .sampler import SamplerStats
from .schedule import Schedule


class SequentialPatchSampler:
    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        channels: int,
        patch: int,
        steps: int,
        omega: float = 3.0,
        eta: float = 1.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.unet, self.channels, self.patch, self.seed = unet, channels, patch, seed
        self.schedule = Schedule(steps, eta)
        self.scale = omega + 1.0
        self.device = torch.device(device)
        self.stats = SamplerStats()

    def _eps(self, x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        times = torch.full((1,), t, dtype=torch.long, device=self.device)
        eps = torch.zeros_like(x)
        for label in torch.unique(labels).tolist():
            region = (labels == label)[None, None].float()
            cond = self.unet(x, times, region * label)
            self.stats.network_evals += 1
            if label != 0:
                null = self.unet(x, times, torch.zeros_like(region))
                self.stats.network_evals += 1
                cond = null + (cond - null) * self.scale
            eps += cond * region
        return eps

    @torch.no_grad()
    def run(self, labels: np.ndarray, max_steps: int | None = None) -> torch.Tensor:
        """Sample a latent for ``labels`` (h, w); stop after ``max_steps`` full steps if given."""
        h, w = labels.shape
        half = self.patch // 2
        steps = len(self.schedule) if max_steps is None else min(max_steps, len(self.schedule))
        x = normal_field(self.seed, INITIAL_STEP, self.channels, 0, h, 0, w).to(self.device)
        label_map = torch.from_numpy(np.ascontiguousarray(labels)).to(self.device)
        times = np.zeros((h, w), dtype=np.int32)
        rng = numpy_rng(self.seed, 0x5E0)
        patches_this_step, step_started = 0, time.perf_counter()
        while times.min() < steps:
            current = int(times.min())
            candidates = np.flatnonzero(times == current)
            i, j = divmod(int(candidates[rng.integers(len(candidates))]), w)
            i, j = min(max(i, half), h - half), min(max(j, half), w - half)
            window = (slice(i - half, i + half), slice(j - half, j + half))
            sub_times = times[window]
            t_index = int(sub_times.min())
            if t_index >= steps:
                continue
            ddim = self.schedule[t_index]
            xs = x[(slice(None), *window)][None]
            eps = self._eps(xs, ddim.t, label_map[window])
            x0 = ddim.predict_x0(xs, eps)
            noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62)))).to(
                self.device
            )
            updated = ddim.update(x0, eps, noise)[0]
            advance = torch.from_numpy(sub_times == t_index).to(self.device)
            x[(slice(None), *window)] = torch.where(advance[None], updated, xs[0])
            times[window] = np.where(sub_times == t_index, sub_times + 1, sub_times)
            patches_this_step += 1
            if int(times.min()) > current:
                self.stats.patches_per_step.append(patches_this_step)
                self.stats.seconds_per_step.append(time.perf_counter() - step_started)
                patches_this_step, step_started = 0, time.perf_counter()
        return x.cpu()
