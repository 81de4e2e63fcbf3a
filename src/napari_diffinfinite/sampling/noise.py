"""Randomness keyed by (seed, step, position).

Every random number the sampler draws is a pure function of the seed, the sampling step
and where it lands on the canvas, so a slide does not depend on the batch size, the
device count, or where a run was interrupted and resumed. Gaussian noise is generated in
fixed canvas-aligned tiles, each from its own counter-based seed; numbers are drawn on the
CPU so that the same seed gives the same slide on any device.
"""

from __future__ import annotations

import numpy as np
import torch

NOISE_TILE = 64
INITIAL_STEP = -1  # the step key of the initial noise x_T

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def key(*parts: int) -> int:
    """A 63-bit seed mixed from integer parts (order matters)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(key(*parts))


def grid_offset(seed: int, step: int, patch: int) -> tuple[int, int]:
    """The random offset (dy, dx) in [0, patch) of the patch grid at ``step``."""
    oy, ox = torch.randint(0, patch, (2,), generator=generator(seed, 0x6772_6964, step)).tolist()
    return oy, ox


def normal_field(seed: int, step: int, channels: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Standard normal noise of shape (channels, y1-y0, x1-x0) for canvas rows y0:y1, cols x0:x1."""
    out = torch.empty(channels, y1 - y0, x1 - x0)
    t = NOISE_TILE
    for ty in range(y0 // t, -(-y1 // t)):
        for tx in range(x0 // t, -(-x1 // t)):
            tile = torch.randn(channels, t, t, generator=generator(seed, step, ty, tx))
            ys, ye = max(y0, ty * t), min(y1, (ty + 1) * t)
            xs, xe = max(x0, tx * t), min(x1, (tx + 1) * t)
            out[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = tile[:, ys - ty * t : ye - ty * t, xs - tx * t : xe - tx * t]
    return out


def numpy_rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(key(*parts))
