"""The diffusion schedule and the DDIM update DiffInfinite samples with.

Cosine betas over 1000 training steps (Nichol & Dhariwal), DDIM over ``steps`` sampling
steps with ``eta`` (1 by default, as in the official code), x0 clipped to [-1, 1].
The (time, time_next) pairs are the official ones: ``linspace(-1, T-1, steps+1)``
truncated to integers and reversed; the last pair ends at -1, where x0 is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def cosine_alphas_cumprod(timesteps: int = 1000, s: float = 0.008) -> torch.Tensor:
    """Cumulative products of alphas, computed in float64 and stored in float32 as upstream."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = torch.clip(1 - (f[1:] / f[:-1]), 0, 0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_time_pairs(steps: int, timesteps: int = 1000) -> list[tuple[int, int]]:
    """The official (t, t_next) pairs, from t = T-1 down to t_next = -1."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    times = torch.linspace(-1, timesteps - 1, steps=steps + 1).int().tolist()
    times = list(reversed(times))
    return list(zip(times[:-1], times[1:]))


@dataclass(frozen=True)
class DDIMStep:
    """Constants of one DDIM update from ``t`` to ``t_next``."""

    t: int
    t_next: int
    sqrt_recip_ac: float
    sqrt_recipm1_ac: float
    sqrt_ac_next: float
    c: float
    sigma: float

    @property
    def final(self) -> bool:
        return self.t_next < 0

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        out = x_t * self.sqrt_recip_ac
        out -= eps * self.sqrt_recipm1_ac
        return out.clamp_(-1.0, 1.0)

    def advance(
        self,
        x_t: torch.Tensor,
        eps: torch.Tensor,
        noise: torch.Tensor | None,
        see_x0: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """x_{t_next} from x_t and the (guided) noise prediction; ``see_x0`` is shown the clipped
        x0 prediction first (previews). ``noise`` may be overwritten."""
        x0 = self.predict_x0(x_t, eps)
        if see_x0 is not None:
            see_x0(x0)
        return self.update(x0, eps, noise, inplace=True)

    def update(
        self, x0: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None, *, inplace: bool = False
    ) -> torch.Tensor:
        """x_{t_next} from the clipped x0 and the (guided) noise prediction.

        ``inplace``: ``x0`` and ``noise`` may be overwritten (saves two allocations per batch).
        """
        if self.final:
            return x0
        out = x0.mul_(self.sqrt_ac_next) if inplace else x0 * self.sqrt_ac_next
        out += self.c * eps
        if self.sigma and noise is not None:
            out += noise.mul_(self.sigma) if inplace else self.sigma * noise
        return out


class Schedule:
    """DDIM sampling schedule: ``steps`` updates with stochasticity ``eta``."""

    def __init__(self, steps: int = 250, eta: float = 1.0, timesteps: int = 1000) -> None:
        self.steps, self.eta, self.timesteps = steps, eta, timesteps
        ac64 = cosine_alphas_cumprod(timesteps)
        ac = ac64.float()
        sqrt_recip = torch.sqrt(1.0 / ac64).float()
        sqrt_recipm1 = torch.sqrt(1.0 / ac64 - 1).float()
        self.alphas_cumprod = ac
        self._steps = []
        for t, t_next in ddim_time_pairs(steps, timesteps):
            a = ac[t]
            if t_next >= 0:
                a_next = ac[t_next]
                sigma = eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
                # clamped: with few steps from t = T-1 rounding can make it slightly negative
                c = (1 - a_next - sigma**2).clamp(min=0).sqrt()
                sqrt_next = a_next.sqrt()
            else:
                sigma = c = sqrt_next = torch.tensor(0.0)
            self._steps.append(
                DDIMStep(
                    t, t_next, float(sqrt_recip[t]), float(sqrt_recipm1[t]), float(sqrt_next), float(c), float(sigma)
                )
            )

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: int) -> DDIMStep:
        return self._steps[index]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion: noise ``x0`` to timesteps ``t`` (one per batch item); for training."""
        ac = self.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.ndim - 1)))
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise
