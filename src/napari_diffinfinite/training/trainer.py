"""The training loop shared by image and mask models, the CLI and the demo recipe.

What it does per step (as the official trainer): draw a batch, compute the objective's
L2 noise-prediction loss (under autocast on GPUs), back-propagate (with a gradient scaler
for float16), clip the gradient norm (1.0), take an Adam step (lr 1e-4, betas (0.9, 0.99))
and update the EMA of the weights (decay 0.995 every 10 steps, ema_pytorch's warm-up).

What it adds:

* **Keyed randomness.** A step's tiles, flips, timesteps, noise, condition dropout and the
  network's dropout are functions of (seed, step, rank). A run resumed at step ``s`` thus
  continues exactly as an uninterrupted run (bit for bit on the same machine), and no
  data-loader state has to be saved.
* **Checkpoints in our model format.** Every ``checkpoint_every`` steps the EMA weights go
  to ``OUT/checkpoints/step-NNNNNNN/`` (``config.json`` + ``model.safetensors``, loadable
  by ``diffinfinite generate --model``) with ``samples.png``; ``OUT/model/`` always holds
  the latest. ``OUT/training-state.pt`` holds what ``--resume`` needs: step, online and EMA
  weights, optimizer and gradient-scaler state, settings and model config. It contains
  tensors and plain containers only, so ``torch.load(weights_only=True)`` reads it and no
  code is ever unpickled.
* **A wall-clock budget** (``max_minutes``), cancellation, a tqdm bar with the loss and
  progress events (stage "train") for the GUI.
* **DDP.** Under torchrun the model is wrapped in DistributedDataParallel; each process
  draws its own share of the batch (``batch_size`` is the global batch) and only rank 0
  writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, TrainingError
from ..model.config import ModelConfig
from ..model.pretrained import DiffusionModel, save_pretrained
from ..model.torch_file import check_torch_zip
from ..progress import CancelToken, ProgressCallback, ProgressEvent, report
from .datasets import TileDataset, batch_keys
from .distributed import DistributedContext, init_distributed, wrap_model
from .ema import EMA
from .objectives import BranchCounts, ImageObjective, MaskObjective
from .previews import image_preview, mask_preview, save_png

log = logging.getLogger(__name__)

STATE_NAME = "training-state.pt"
STATE_FORMAT = "napari-diffinfinite-training-state"
STATE_VERSION = 1
LOG_NAME = "train-log.jsonl"
SETTINGS_NAME = "train-settings.json"
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
# Model-config fields that only say how to sample or describe the model: changing them
# (e.g. a demo's default DDIM steps) does not change what is trained, so --resume allows it.
_CONFIG_NOT_TRAINED = frozenset({"sampling_steps", "eta", "default_omega", "description", "extra", "layout_upsample"})

# Settings that must not change on --resume: they define which batches each step sees.
_RESUME_FIXED = ("seed", "batch_size", "cond_drop_prob", "mask_mode")


@dataclass
class TrainSettings:
    """Hyper-parameters of a run; the defaults are the official trainer's."""

    steps: int = 100_000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ema_update_every: int = 10
    ema_update_after: int = 100
    ema_power: float = 2.0 / 3.0
    cond_drop_prob: float = 0.1
    mask_mode: str = "full"
    lattice_weight: float = 0.0  # pixel-unshuffle models: weight of the block-lattice penalty (objectives.py)
    amp: str = "auto"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    num_samples: int = 4
    sample_steps: int | None = None
    sample_omega: float = 3.0
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    max_minutes: float | None = None

    def validate(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"amp must be one of {', '.join(AMP_CHOICES)}, not {self.amp!r}")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint interval must be at least 1 step, got {self.checkpoint_every}")
        if self.grad_clip <= 0:
            problems.append(f"gradient clipping norm must be positive, got {self.grad_clip}")
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


@dataclass
class TrainResult:
    """How a run ended: ``stopped`` is "done", "time budget" or "cancelled"."""

    step: int
    stopped: str
    seconds: float
    last_loss: float
    model_dir: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    branches: BranchCounts = field(default_factory=BranchCounts)


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed for the randomness of ``stream`` at (seed, step, rank)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, stream]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class KeyBatchSampler(torch.utils.data.Sampler):
    """Yields the item keys of steps ``start .. stop-1`` (see :func:`batch_keys`)."""

    def __init__(self, seed: int, start: int, stop: int, batch_size: int, rank: int) -> None:
        self.seed, self.start, self.stop, self.batch_size, self.rank = seed, start, stop, batch_size, rank

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield batch_keys(self.seed, step, self.batch_size, self.rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("float16 mixed precision needs a GPU; use --amp off or --amp bf16 on the CPU")
        return torch.float16
    return torch.bfloat16


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_folder(source: Path, target: Path) -> None:
    """Make ``target`` a copy of the folder ``source`` without ever leaving no ``target``.

    The copy is written to a temporary sibling first; the old ``target`` is renamed aside,
    the copy renamed into place, and only then is the old one deleted. A crash while copying
    leaves the old ``target`` untouched, a failed rename puts it back, and a process killed
    between the two renames leaves it at ``.NAME.old``, which the next call restores first.
    """
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old.is_dir() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state file with ``weights_only=True`` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no training state at {path}; start a new run without --resume")
    try:
        check_torch_zip(path)  # not a zip bomb, not a legacy format
    except CheckpointError as exc:
        raise TrainingError(f"not a readable training state: {exc}; start a new run without --resume") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path} is not a readable training state (truncated or not ours?): {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a napari-diffinfinite training state")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise TrainingError(f"{path} was written by a newer napari-diffinfinite; upgrade to resume it")
    return state


class Trainer:
    """Trains ``model`` (a :class:`DiffusionModel`) with ``objective`` on ``dataset``.

    ``out_dir`` receives checkpoints, the final EMA model (``out_dir/model``), samples, the
    training state and a JSON-lines log. ``resume=True`` continues from
    ``out_dir/training-state.pt``; without it an existing state is refused rather than
    overwritten.
    """

    def __init__(
        self,
        model: DiffusionModel,
        objective: ImageObjective | MaskObjective,
        dataset: TileDataset,
        settings: TrainSettings,
        out_dir: str | os.PathLike,
        *,
        device: str | None = "auto",
        resume: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        show_progress_bar: bool = True,
        distributed: DistributedContext | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.config: ModelConfig = model.config
        self.objective = objective
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.cancel = cancel
        self.show_progress_bar = show_progress_bar
        self.metadata = dict(metadata or {})
        self.ctx = distributed or init_distributed(device)
        self.device = self.ctx.device
        if settings.batch_size % self.ctx.world_size:
            raise TrainingError(
                f"the batch size {settings.batch_size} must be divisible by the number of processes "
                f"({self.ctx.world_size}); it is the global batch, split across processes"
            )
        self.local_batch = settings.batch_size // self.ctx.world_size
        self.amp_dtype = _amp_dtype(settings.amp, self.device)
        self.unet = model.unet.to(self.device).float().train()
        self.net = wrap_model(self.unet, self.ctx)
        self.optimizer = torch.optim.Adam(self.unet.parameters(), lr=settings.lr, betas=tuple(settings.betas))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(
            self.unet, beta=settings.ema_decay, update_every=settings.ema_update_every,
            update_after_step=settings.ema_update_after, power=settings.ema_power,
        )  # fmt: skip
        self.step = 0
        self.branches = BranchCounts()
        self.checkpoints: list[Path] = []
        self.last_loss = float("nan")
        self._preview_items: list[dict] | None = None
        self._prepare_out_dir(resume)

    # ------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_NAME

    def _prepare_out_dir(self, resume: bool) -> None:
        if resume and self.state_path.is_file():
            self.load_state(self.state_path)
            return
        if resume:
            if (self.out_dir / "checkpoints").is_dir():
                raise TrainingError(
                    f"{self.out_dir} has checkpoints but no {STATE_NAME} to resume from; start a new run in another folder"
                )
            log.info("nothing to resume in %s; starting a new run", self.out_dir)
        elif self.state_path.is_file():
            raise TrainingError(
                f"{self.out_dir} already holds a training run ({STATE_NAME}); pass --resume to continue it, "
                "or choose another --out folder"
            )
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything ``--resume`` needs, as tensors and plain containers."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "model_config": json.dumps(self.config.to_dict()),
            "settings": json.dumps(self.settings.to_dict()),
            "model": {k: v.detach().cpu() for k, v in self.unet.state_dict().items()},
            "ema": {
                "step": self.ema.step,
                "weights": {k: v.detach().cpu() for k, v in self.ema.ema_model.state_dict().items()},
            },
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "branches": {"conditional": self.branches.conditional, "unconditional": self.branches.unconditional},
            "checkpoints": [str(p) for p in self.checkpoints],
        }

    def load_state(self, path: str | os.PathLike) -> None:
        state = load_training_state(path)
        saved_config = json.loads(state["model_config"])
        current = self.config.to_dict()
        diffs = sorted(k for k in set(saved_config) | set(current)
                       if k not in _CONFIG_NOT_TRAINED and saved_config.get(k) != current.get(k))  # fmt: skip
        if diffs:
            raise TrainingError(
                f"cannot resume {path}: the model configuration differs ({', '.join(diffs)}); "
                "resume with the original model options"
            )
        saved = json.loads(state["settings"])
        changed = [f"{k}: {saved.get(k)!r} -> {getattr(self.settings, k)!r}" for k in _RESUME_FIXED
                   if saved.get(k) != getattr(self.settings, k)]  # fmt: skip
        if changed:
            raise TrainingError(
                f"cannot resume {path} with different settings ({'; '.join(changed)}); use the original ones"
            )
        self.unet.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        branches = state.get("branches") or {}
        self.branches = BranchCounts(int(branches.get("conditional", 0)), int(branches.get("unconditional", 0)))
        self.checkpoints = [Path(p) for p in state.get("checkpoints", [])]
        log.info("resumed %s at step %d", path, self.step)

    # ------------------------------------------------------------------ loop

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up, then constant or cosine to zero."""
        s = self.settings
        if s.warmup_steps and step < s.warmup_steps:
            return s.lr * (step + 1) / s.warmup_steps
        if s.lr_schedule == "cosine":
            span = max(1, s.steps - s.warmup_steps)
            progress = min(1.0, (step - s.warmup_steps) / span)
            return s.lr * 0.5 * (1 + math.cos(math.pi * progress))
        return s.lr

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, start: int, stop: int):
        sampler = KeyBatchSampler(self.settings.seed, start, stop, self.local_batch, self.ctx.rank)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.settings.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG untouched
            persistent_workers=False,
        )

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimisation step on ``batch``; returns the loss (this process)."""
        s = self.settings
        step = self.step
        generator = torch.Generator().manual_seed(step_seed(s.seed, step, self.ctx.rank, 1))
        torch.manual_seed(step_seed(s.seed, step, self.ctx.rank, 2))  # the network's dropout
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        loss, counts = self.objective.loss(self.net, batch, generator, self.device, self._autocast)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {step}; lower the learning rate (--lr) or use --amp off"
            )
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unet)
        self.branches.add(counts)
        self.step += 1
        return float(loss.detach())

    def train(self) -> TrainResult:
        """Run until ``settings.steps``, the time budget or cancellation; always checkpoints at the end."""
        s = self.settings
        started = time.monotonic()
        if self.ctx.is_main:
            self._write_settings()
        bar = None
        if self.show_progress_bar and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, initial=self.step, desc=f"training {self.config.kind} model", unit="step",
                       dynamic_ncols=True)  # fmt: skip
        stopped = "done"
        window: list[float] = []
        smoothed = None
        log_started = time.monotonic()
        try:
            if self.step >= s.steps:
                return self._finish("done", started)
            for batch in self._loader(self.step, s.steps):
                loss = self.train_step(batch)
                self.last_loss = loss
                window.append(loss)
                smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
                report(self.progress, ProgressEvent("train", self.step, s.steps, f"loss {smoothed:.4f}"))
                if self.step % s.log_every == 0 or self.step == s.steps:
                    mean = self.ctx.mean(float(np.mean(window)))
                    self._log({"step": self.step, "loss": round(mean, 6), "lr": self.lr_at(self.step - 1),
                               "seconds": round(time.monotonic() - started, 2),
                               "steps_per_s": round(len(window) / max(1e-9, time.monotonic() - log_started), 4)})  # fmt: skip
                    window, log_started = [], time.monotonic()
                out_of_time = s.max_minutes is not None and time.monotonic() - started >= s.max_minutes * 60
                cancelled = self.cancel is not None and self.cancel.cancelled
                if self.ctx.any(out_of_time or cancelled):
                    stopped = "cancelled" if cancelled else "time budget"
                    break
                if self.step % s.checkpoint_every == 0 and self.step < s.steps:
                    self.save_checkpoint()
            return self._finish(stopped, started)
        except KeyboardInterrupt:
            if not self.ctx.enabled and self.step > 0:  # Ctrl-C: keep what was trained (one process)
                if bar is not None:
                    bar.close()
                print(f"\ninterrupted at step {self.step}; saving a checkpoint for --resume ...")
                self.save_checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()

    def _finish(self, stopped: str, started: float) -> TrainResult:
        model_dir = self.save_checkpoint()
        return TrainResult(self.step, stopped, time.monotonic() - started, self.last_loss, model_dir,
                           list(self.checkpoints), self.branches)  # fmt: skip

    # ------------------------------------------------------------------ output

    def ema_model(self) -> DiffusionModel:
        """The EMA weights as a model (what checkpoints contain)."""
        return DiffusionModel(self.config, self.ema.ema_model, sha256="", source=f"training step {self.step}")

    def preview_items(self) -> list[dict]:
        """Fixed tiles (no augmentation) shown in every checkpoint's samples."""
        if self._preview_items is None:
            augment, self.dataset.augment = self.dataset.augment, False
            try:
                keys = batch_keys(self.settings.seed, -1, self.settings.num_samples)
                self._preview_items = [self.dataset[k] for k in keys]
            finally:
                self.dataset.augment = augment
        return self._preview_items

    def render_samples(self) -> np.ndarray | None:
        if self.settings.num_samples <= 0:
            return None
        items = self.preview_items()
        model = self.ema.ema_model
        codec = self.objective.codec
        if self.config.kind == "image":
            return image_preview(model, self.config, codec, items, seed=self.settings.seed,
                                 steps=self.settings.sample_steps, omega=self.settings.sample_omega,
                                 device=self.device)  # fmt: skip
        return mask_preview(model, self.config, codec, items, seed=self.settings.seed,
                            steps=self.settings.sample_steps, device=self.device)  # fmt: skip

    def save_checkpoint(self) -> Path | None:
        """Write the EMA model + samples as a checkpoint, refresh ``OUT/model`` and the state."""
        path = None
        if self.ctx.is_main:
            name = f"step-{self.step:07d}"
            path = save_pretrained(self.ema_model(), self.out_dir / "checkpoints" / name, overwrite=True)
            samples = self.render_samples()
            if samples is not None:
                save_png(samples, path / "samples.png")
            replace_folder(path, self.out_dir / "model")
            if path not in self.checkpoints:
                self.checkpoints.append(path)
            self._prune_checkpoints()
            _atomic_torch_save(self.state_dict(), self.state_path)
            self._log({"step": self.step, "checkpoint": str(path)})
        self.ctx.barrier()
        return self.out_dir / "model" if self.ctx.is_main else None

    def _prune_checkpoints(self) -> None:
        keep = self.settings.keep_checkpoints
        if keep <= 0:
            return
        while len(self.checkpoints) > keep:
            shutil.rmtree(self.checkpoints.pop(0), ignore_errors=True)

    def _log(self, row: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self.out_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _write_settings(self) -> None:
        data = {
            "settings": self.settings.to_dict(),
            "model_config": self.config.to_dict(),
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            "device": str(self.device),
            "processes": self.ctx.world_size,
            "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "off",
            "dataset": str(self.dataset.summary()),
            **self.metadata,
        }
        (self.out_dir / SETTINGS_NAME).write_text(json.dumps(data, indent=2) + "\n")
