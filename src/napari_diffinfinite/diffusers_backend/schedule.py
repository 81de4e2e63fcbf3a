"""A diffusers scheduler driven through its ``step`` API, per latent pixel.

The random-patch sampler advances every latent pixel once per step, but in batches of
windows; a diffusers scheduler advances one whole sample per ``step`` call. Both schedulers
offered here are elementwise in the sample, so a batch of windows is a valid sample:

* **DDIM** (``DDIMScheduler``) is stateless between calls: ``step(model_output, t, x,
  eta, variance_noise=keyed noise)``; the keyed noise (a function of seed, step and position)
  keeps the slide independent of batch size and resume.
* **DPM-Solver++** (``DPMSolverMultistepScheduler``, multistep, order 1-3) remembers the
  model outputs of earlier steps. Every pixel's own history is kept on the canvas as extra
  channels (``history_channels``): before each batch the scheduler's step index, its
  lower-order counter and its ``model_outputs`` are set to that batch's step and gathered
  history, and after ``step`` the new history is read back and written with the latent. This
  sets three of the scheduler's attributes (``_step_index``, ``lower_order_nums``,
  ``model_outputs``) that diffusers keeps for exactly this state.

On a canvas of one patch both give what the diffusers pipeline gives for the same initial
latents (tested). Prediction types (epsilon, v_prediction, sample) are the scheduler's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SettingsError

SCHEDULERS = ("ddim", "dpm++")


def make_scheduler(name: str, config: dict):
    """The scheduler ``name`` ("ddim" or "dpm++") built from a pipeline's scheduler config
    (the usual diffusers way to swap schedulers: ``from_config``)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        scheduler = DDIMScheduler.from_config(config)
    elif name == "dpm++":
        kept = config.get("_class_name") == "DPMSolverMultistepScheduler"
        extra = {} if kept else {"algorithm_type": "dpmsolver++", "solver_order": 2}
        scheduler = DPMSolverMultistepScheduler.from_config(config, **extra)
        if scheduler.config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"):
            raise SettingsError(f"DPM-Solver algorithm {scheduler.config.algorithm_type!r} is not supported")
    else:
        raise SettingsError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if getattr(scheduler.config, "thresholding", False):
        raise SettingsError(
            "the scheduler config asks for dynamic thresholding, which works per whole image, not per latent "
            "pixel; set thresholding to false in the pipeline's scheduler/scheduler_config.json"
        )
    return scheduler


def scheduler_name(scheduler) -> str:
    return "ddim" if type(scheduler).__name__ == "DDIMScheduler" else "dpm++"


class DiffusersSchedule:
    """The sampler's schedule protocol over a diffusers scheduler set to ``steps`` steps."""

    def __init__(self, scheduler, steps: int, *, channels: int, eta: float = 0.0) -> None:
        scheduler.set_timesteps(steps)
        self.scheduler = scheduler
        self.name = scheduler_name(scheduler)
        self.eta = float(eta)
        self.channels = channels
        self.order = int(getattr(scheduler.config, "solver_order", 1)) if self.name == "dpm++" else 1
        self.history_channels = (self.order - 1) * channels
        self.stochastic = self.eta > 0 if self.name == "ddim" else scheduler.config.algorithm_type.startswith("sde")
        self.timesteps = [int(t) for t in scheduler.timesteps]

    def __len__(self) -> int:
        return len(self.timesteps)

    def __getitem__(self, index: int) -> DiffusersStep:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return DiffusersStep(self, index % len(self))


class DiffusersStep:
    """Step ``index`` of a :class:`DiffusersSchedule`. ``final`` is always false and ``sigma``
    says whether the scheduler takes noise at this step (the sampler draws it, keyed)."""

    final = False

    def __init__(self, schedule: DiffusersSchedule, index: int) -> None:
        self.schedule, self.index = schedule, index
        self.t = schedule.timesteps[index]
        self.sigma = 1.0 if schedule.stochastic else 0.0

    def advance(
        self,
        x: torch.Tensor,
        model_output: torch.Tensor,
        noise: torch.Tensor | None,
        see_x0: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The next sample (+ history channels) from ``x`` (B, C [+ history], ...) and the guided output."""
        s = self.schedule
        sched = s.scheduler
        c = model_output.shape[1]
        sample = x[:, :c]
        if s.name == "ddim":
            out = sched.step(model_output, self.t, sample, eta=s.eta, variance_noise=noise if s.eta > 0 else None)
            if see_x0 is not None:
                see_x0(out.pred_original_sample)
            return out.prev_sample
        history = list(x[:, c:].split(c, dim=1)) if s.order > 1 else []
        sched._step_index = self.index
        sched.lower_order_nums = min(self.index, s.order)
        sched.model_outputs = [None, *history]
        prev = sched.step(model_output, self.t, sample, variance_noise=noise if s.stochastic else None).prev_sample
        outputs = sched.model_outputs
        if see_x0 is not None:
            see_x0(outputs[-1])
        return torch.cat([prev, *outputs[1:]], dim=1) if s.order > 1 else prev
