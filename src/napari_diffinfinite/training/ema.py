"""Exponential moving average of the weights, with the behaviour of ``ema_pytorch.EMA``.

The official trainer wraps its model in ``ema_pytorch.EMA(model, beta=0.995,
update_every=10)`` with the package defaults ``update_after_step=100``, ``inv_gamma=1``,
``power=2/3`` and ``min_value=0``. This class reproduces that schedule without the
dependency: ``update()`` is called once per training step; every ``update_every``-th call
it either copies the weights (during the first ``update_after_step`` calls) or moves the
average towards them with decay ``min(beta, 1 - (1 + e / inv_gamma) ** -power)``, where
``e`` counts the calls after the warm-up. The warm-up keeps early averages from being
dominated by the random initialisation. Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Moving average of ``model``'s parameters in ``self.ema_model`` (a frozen copy)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 0.995,
        update_every: int = 10,
        update_after_step: int = 100,
        inv_gamma: float = 1.0,
        power: float = 2.0 / 3.0,
        min_value: float = 0.0,
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {beta}")
        self.beta = beta
        self.update_every = max(1, int(update_every))
        self.update_after_step = int(update_after_step)
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    def current_decay(self) -> float:
        epoch = max(self.step - self.update_after_step - 1, 0)
        if epoch <= 0:
            return 0.0
        value = 1 - (1 + epoch / self.inv_gamma) ** -self.power
        return float(min(max(value, self.min_value), self.beta))

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.ema_model.parameters(), model.parameters()):
            ema_p.copy_(p.detach())
        self._copy_buffers(model)

    @torch.no_grad()
    def _copy_buffers(self, model: nn.Module) -> None:
        for ema_b, b in zip(self.ema_model.buffers(), model.buffers()):
            ema_b.copy_(b)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call once per optimisation step with the (unwrapped) online model."""
        step = self.step
        self.step += 1
        if step % self.update_every:
            return
        if step <= self.update_after_step:
            self.copy_from(model)
            return
        decay = self.current_decay()
        for ema_p, p in zip(self.ema_model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - decay)
        self._copy_buffers(model)

    def state_dict(self) -> dict:
        return {"step": self.step, "weights": self.ema_model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.ema_model.load_state_dict(state["weights"])
