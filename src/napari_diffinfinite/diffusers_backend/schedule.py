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

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import SettingsError
from ..model.config import int_problem, is_real, json_type

SCHEDULERS = ("ddim", "dpm++")

# What a pipeline's scheduler_config.json may say, for the fields DDIMScheduler and
# DPMSolverMultistepScheduler take from it (``from_config``). diffusers checks few of them, and
# late: a bad value fails mid-slide or gives NaN latents; a huge ``num_train_timesteps`` sizes
# the schedule's tables and ``solver_order`` the per-pixel history kept on the canvas.
MAX_TRAIN_TIMESTEPS = 10_000  # Stable Diffusion: 1000
MAX_STEPS_OFFSET = 10  # Stable Diffusion: 1
SCHEDULER_CHOICES: dict[str, tuple[Any, ...]] = {
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
    "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver", "deis"),
    "solver_type": ("midpoint", "heun", "logrho", "bh1", "bh2"),  # diffusers maps the last three to midpoint
    "final_sigmas_type": ("zero", "sigma_min"),
    "variance_type": (None, "learned", "learned_range"),
}
SCHEDULER_FLAGS = (
    "clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr", "lower_order_final",
    "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
    "use_flow_sigmas", "use_dynamic_shifting",
)  # fmt: skip
SCHEDULER_POSITIVE = ("clip_sample_range", "sample_max_value", "dynamic_thresholding_ratio")


def scheduler_config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with a pipeline's scheduler config (empty when nothing), field by field.

    Absent fields take diffusers' defaults. Checked before any scheduler is built, so a bad
    file is refused with the field to fix instead of failing mid-slide or sampling NaN."""
    problems = []
    for name, choices in SCHEDULER_CHOICES.items():
        if name in config and config[name] not in choices:
            listed = ", ".join(str(c) if c is None else repr(c) for c in choices)
            problems.append(f"{name} must be one of {listed}, not {config[name]!r:.40}")
    for name in SCHEDULER_FLAGS:
        if name in config and not isinstance(config[name], bool):
            problems.append(f"{name} must be true or false, not {json_type(config[name])} {config[name]!r:.40}")
    for name in SCHEDULER_POSITIVE:
        if name in config and not (is_real(config[name]) and config[name] > 0):
            problems.append(f"{name} must be a positive number, got {config[name]!r:.40}")
    timesteps = config.get("num_train_timesteps", 1000)
    problems += int_problem("num_train_timesteps", timesteps, 1, MAX_TRAIN_TIMESTEPS)
    problems += int_problem("steps_offset", config.get("steps_offset", 0), 0, MAX_STEPS_OFFSET)
    problems += int_problem("solver_order", config.get("solver_order", 2), 1, 3)
    betas = [config.get("beta_start", 0.0001), config.get("beta_end", 0.02)]
    if not all(is_real(b) and 0 < b < 1 for b in betas) or betas[0] >= betas[1]:
        problems.append(
            f"beta_start and beta_end must be numbers with 0 < beta_start < beta_end < 1, got {betas!r:.60}"
        )
    trained = config.get("trained_betas")
    if trained is not None and not (
        isinstance(trained, list) and len(trained) == timesteps and all(is_real(b) and 0 < b < 1 for b in trained)
    ):
        problems.append("trained_betas must be null or a list of num_train_timesteps numbers between 0 and 1")
    clipped = config.get("lambda_min_clipped", -math.inf)
    if not (is_real(clipped) or clipped == -math.inf):
        problems.append(f"lambda_min_clipped must be a number, got {clipped!r:.40}")
    if config.get("thresholding") is True:
        problems.append("thresholding must be false: dynamic thresholding works per whole image, not per latent pixel")
    if config.get("use_flow_sigmas") is True or config.get("use_dynamic_shifting") is True:
        problems.append("use_flow_sigmas and use_dynamic_shifting are for flow-matching models; they must be false")
    sigmas = [config.get(n) is True for n in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")]
    if sum(sigmas) > 1:
        problems.append("at most one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas may be true")
    if (
        config.get("_class_name") == "DPMSolverMultistepScheduler"
        and config.get("algorithm_type") in ("dpmsolver", "sde-dpmsolver")
        and config.get("final_sigmas_type", "zero") == "zero"
    ):
        problems.append(f"final_sigmas_type 'zero' needs algorithm_type dpmsolver++, not {config['algorithm_type']!r}")
    return problems


def make_scheduler(name: str, config: dict):
    """The scheduler ``name`` ("ddim" or "dpm++") built from a pipeline's scheduler config
    (the usual diffusers way to swap schedulers: ``from_config``), checked first by
    :func:`scheduler_config_problems` (when the pipeline folder is checked)."""
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
