"""The DiffInfinite training losses: noise prediction under a cosine schedule.

Both models learn ``eps`` of a DDPM with ``timesteps`` (1000) steps: draw ``t`` uniformly in
[0, T), noise the latent ``x0`` to ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` and regress
the network's output on ``eps`` with the L2 loss (the official sample config's
``loss_type='l2'``).

* :class:`ImageObjective`: the latent is the codec's encoding of the tile (SD-2 VAE latent
  sample / 50, or the pixels in [-1, 1] for pixel models); the condition is the tile's label
  map at latent resolution. The network derives its class embedding from the largest label
  and its attention queries from the binarised map. An all-zero map is the unconditional
  branch of classifier-free guidance: unlabelled tiles train it, and so does *condition
  dropout*, which zeroes the map of a labelled tile with probability ``cond_drop_prob``.
* :class:`MaskObjective`: the latent encodes a mask image in the model's ``mask_encoding``
  (DiffInfinite's grey ``label / (num_labels - 1)`` in all three channels, or one channel per
  class; :mod:`..model.mask_encoding`, which the mask sampler reads back); the condition is a
  class index, replaced by the learned null embedding with probability ``cond_drop_prob``.

``mask_mode`` of the image objective: ``"full"`` (the official training) feeds the whole
label map; ``"per-label"`` feeds the map of one label present in the tile, drawn at
random (its pixels keep the label, the rest become 0). The latter is exactly what the
sampler shows the network when it composites per label (each label's pass sees only that
label's pixels), so the network learns where each class is rather than only which class
is the largest. ``"per-label-loss"`` feeds the same map and takes the loss only over that
label's pixels (the whole tile for the unconditional branch): the sampler uses a label's
prediction only there, so the network need not guess the rest of the tile, and the class
embedding alone already says what those pixels look like (faster to learn on small budgets).

Cascade stages (``config.cascade``, ``diffinfinite train --cascade-from S``) learn from
(lower level, tile, labels) triples built from the tile itself: the lower level is the
``S``-block mean of the tile (what the slide pyramid holds one level up), on a block grid
at a random phase for image conditions (a patch meets the level below at any phase while
sampling), given to the network exactly as the sampler gives it (:mod:`..model.cascade`).
With ``objective: pred_v`` the network regresses ``v = sqrt(a) eps - sqrt(1 - a) x0``.

``lattice_weight`` (pixel models with a pixel unshuffle f > 1 only) adds a penalty on the
*block lattice*: such a network predicts each f x f block of pixels as f^2 channels of one
position, and a small network learns the pixels inside a block more alike than pixels across
block borders. Its x0 estimates then have a mean gradient that varies with the position
modulo f (a few per cent), every sampling step adds it at the same phase, and the slide shows
a fixed f px lattice that no real image has. The penalty (:func:`lattice_penalty`) is the
squared deviation from flat of the phase profile (mean |gradient| by position modulo f,
relative to its mean, per image and both axes, averaged over the batch by scored pixels) of
the x0 estimate: zero for any estimate without a lattice, and blind to everything but the phase.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..model.cascade import block_mean, condition_field
from ..model.config import ModelConfig
from ..model.mask_encoding import labels_to_image
from ..sampling.schedule import Schedule

MASK_MODES = ("full", "per-label", "per-label-loss")


@dataclass
class BranchCounts:
    """Items that trained the conditional and the unconditional branch of guidance."""

    conditional: int = 0
    unconditional: int = 0
    per_label: dict[int, int] = field(default_factory=dict)

    def add(self, other: BranchCounts) -> None:
        self.conditional += other.conditional
        self.unconditional += other.unconditional
        for k, v in other.per_label.items():
            self.per_label[k] = self.per_label.get(k, 0) + v


def _autocast_or_null(autocast: Callable[[], AbstractContextManager] | None) -> AbstractContextManager:
    return autocast() if autocast is not None else nullcontext()


def phase_profile(pixels: torch.Tensor, period: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2, period): each image's mean |gradient| by position modulo ``period`` along x
    (row 0) and y (row 1), divided by its mean over the phases.

    Per image, so that flat glass counts as much as busy tissue (its lattice is a few tenths of
    a grey level, but as visible against its flatness). ``weight`` (B, 1, H, W), if given,
    weights each pixel pair by the product of its pixels' weights (e.g. only the pixels a
    per-label loss scores); an image with no weight gets a profile of zeros."""
    rows = []
    for axis in (-1, -2):
        n = pixels.shape[axis]
        grad = (pixels.narrow(axis, 1, n - 1) - pixels.narrow(axis, 0, n - 1)).abs()
        w = (
            torch.ones_like(grad[:, :1])
            if weight is None
            else weight.narrow(axis, 1, n - 1) * weight.narrow(axis, 0, n - 1)
        )
        grad, w = grad.movedim(axis, -1), w.movedim(axis, -1)
        sums = torch.stack([(grad[..., p::period] * w[..., p::period]).sum(dim=(1, 2, 3)) for p in range(period)], 1)
        counts = torch.stack([w[..., p::period].sum(dim=(1, 2, 3)) for p in range(period)], 1)
        means = sums / counts.clamp_min(1e-6)
        rows.append(means / means.mean(dim=1, keepdim=True).clamp_min(1e-8))
    return torch.stack(rows, 1)


def lattice_penalty(x0_estimate: torch.Tensor, factor: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared deviation from flat (all ones) of the batch's mean phase profile
    (:func:`phase_profile`, period ``factor``; images weighted by their scored pixels) of the x0
    estimate, a latent of a pixel unshuffle by ``factor`` (see the module docstring); ``weight``
    is at latent resolution.

    Flat, not the real tile's profile: scanners store slides as JPEG, whose 16 px colour blocks
    (4:2:0) are 4 px at a 4x downsample, and flat glass keeps their trace (the demo slide's
    glass: a dip of 3 to 6 % at one phase of 4, on a gradient of 0.3 grey levels). Matched per image, that
    would teach the generator the codec's lattice, which is what the penalty is there to remove."""
    estimate = F.pixel_shuffle(x0_estimate, factor)
    if weight is not None:
        weight = F.interpolate(weight, scale_factor=factor, mode="nearest")
    profile = phase_profile(estimate, factor, weight)
    # each image's profile counts by its scored pixels: a sliver of one label is too few
    # pixels for a profile, and its noise would otherwise count as much as a whole tile
    pixels = torch.ones(len(profile), device=profile.device) if weight is None else weight.sum(dim=(1, 2, 3))
    if not bool(pixels.sum() > 0):
        return estimate.sum() * 0.0
    share = pixels / pixels.sum()
    return ((profile * share[:, None, None]).sum(dim=0) - 1.0).square().sum()


def _alpha_bar(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at timesteps ``t``, shaped to broadcast over a batch like ``like``."""
    return schedule.alphas_cumprod.to(like.device)[t].reshape(-1, *([1] * (like.ndim - 1)))


def x0_estimate(
    objective: str, schedule: Schedule, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The network's estimate of x0 from its prediction ``pred`` (noise or v) at ``x_t``."""
    a = _alpha_bar(schedule, t, x_t)
    if objective == "pred_v":
        return a.sqrt() * x_t - (1 - a).sqrt() * pred
    return (x_t - (1 - a).sqrt() * pred) / a.sqrt().clamp_min(1e-3)


def regression_target(
    objective: str, schedule: Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network regresses at timesteps ``t``: the noise (``pred_noise``) or
    ``v = sqrt(a) eps - sqrt(1 - a) x0`` (``pred_v``)."""
    if objective != "pred_v":
        return noise
    a = _alpha_bar(schedule, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


class ImageObjective:
    """Noise-prediction loss of the mask-conditioned image model (see the module docstring)."""

    def __init__(
        self,
        config: ModelConfig,
        codec,
        *,
        cond_drop_prob: float = 0.1,
        mask_mode: str = "full",
        lattice_weight: float = 0.0,
    ) -> None:
        if config.kind != "image":
            raise TrainingError(f"ImageObjective needs an image model config, not a {config.kind} model")
        if mask_mode not in MASK_MODES:
            raise TrainingError(f"mask mode must be one of {', '.join(MASK_MODES)}, not {mask_mode!r}")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise TrainingError(f"condition dropout must be a probability in [0, 1], got {cond_drop_prob}")
        if lattice_weight < 0:
            raise TrainingError(f"the lattice weight must be 0 (off) or positive, got {lattice_weight}")
        if lattice_weight and (config.codec != "identity" or config.pixel_unshuffle < 2):
            raise TrainingError(
                "the lattice penalty is for pixel models with a pixel unshuffle of 2 or more (their f x f block "
                f"lattice); this model has codec {config.codec!r}, pixel_unshuffle {config.pixel_unshuffle}: "
                "leave --lattice-weight out"
            )
        self.lattice_weight = float(lattice_weight)
        self.config = config
        self.codec = codec
        self.cond_drop_prob = cond_drop_prob
        self.mask_mode = mask_mode
        self.timesteps = config.timesteps
        self.schedule = Schedule(1, 1.0, config.timesteps)
        self.num_classes = config.unet.num_classes
        self.cascade = config.cascade

    def cascade_condition(
        self,
        images: torch.Tensor,
        shape: tuple[int, int],
        generator: torch.Generator,
        device: torch.device,
        offset: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The lower-level condition (B, Cc, h, w) of tiles ``images`` (B, 3, H, W) in [0, 1].

        ``image``: the tile's block mean at a random phase, in [-1, 1], folded onto the latent
        grid; ``latent``: the codec's encoding of the tile's block mean (phase 0; the tile side
        must be a multiple of ``parent_scale`` times the codec's scale factor), upsampled.
        ``offset``: the block phase of an image condition (default: drawn from ``generator``).
        """
        scale, sub = int(self.cascade["parent_scale"]), self.config.scale_factor
        images = images.to(device, non_blocking=True).float()
        if self.cascade["condition"] == "image":
            drawn = tuple(int(v) for v in torch.randint(0, scale, (2,), generator=generator))
            offset = drawn if offset is None else offset
            low = block_mean(images * 2 - 1, scale, offset)
            return condition_field(low, shape, sub=sub, scale=scale, offset=offset)
        if images.shape[-1] % (scale * sub) or images.shape[-2] % (scale * sub):
            raise TrainingError(
                f"a cascade stage conditioned on latents needs tiles whose sides are multiples of {scale * sub} px "
                f"(parent_scale x the codec's scale factor), got {tuple(images.shape[-2:])}; change --crop-size"
            )
        with torch.no_grad():
            low = self.codec.encode(block_mean(images, scale)).float()
        return condition_field(low, shape, sub=1, scale=scale)

    def encode(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        images = batch["image"].to(device, non_blocking=True)
        with torch.no_grad():
            return self.codec.encode(images).float()

    def conditions(self, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, BranchCounts]:
        """The (B, h, w) masks the network sees, after per-label selection and dropout."""
        b = labels.shape[0]
        top = int(labels.max()) if labels.numel() else 0
        if top >= self.num_classes:
            raise TrainingError(
                f"a training tile has label {top} but the model has {self.num_classes} classes (0..{self.num_classes - 1})"
            )
        masks = labels.clone()
        if self.mask_mode in ("per-label", "per-label-loss"):
            picks = torch.rand(b, generator=generator)
            for i in range(b):
                present = torch.unique(labels[i])
                present = present[present > 0]
                if len(present):
                    label = present[min(int(picks[i] * len(present)), len(present) - 1)]
                    masks[i] = torch.where(labels[i] == label, label, torch.zeros_like(label))
        drop = torch.rand(b, generator=generator) < self.cond_drop_prob
        masks[drop] = 0
        counts = BranchCounts()
        tops = masks.reshape(b, -1).amax(dim=1).tolist()
        for top_label in tops:
            if top_label > 0:
                counts.conditional += 1
                counts.per_label[int(top_label)] = counts.per_label.get(int(top_label), 0) + 1
            else:
                counts.unconditional += 1
        return masks, counts

    def loss(
        self,
        net: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, BranchCounts]:
        """Mean L2 loss of the batch and the branches it trained. Randomness comes from the
        CPU ``generator`` only, so a step's noise does not depend on the device."""
        x0 = self.encode(batch, device)
        labels = batch["labels"]
        if tuple(labels.shape[-2:]) != tuple(x0.shape[-2:]):
            raise TrainingError(
                f"label maps of {tuple(labels.shape[-2:])} do not match latents of {tuple(x0.shape[-2:])}; "
                "the dataset's label scale must equal the codec's scale factor"
            )
        masks, counts = self.conditions(labels, generator)
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        extra = ()
        if self.cascade is not None:
            extra = (self.cascade_condition(batch["image"], tuple(x0.shape[-2:]), generator, device),)
        t, noise, masks = t.to(device), noise.to(device), masks.to(device)
        x_t = self.schedule.q_sample(x0, t, noise)
        target = regression_target(self.config.objective, self.schedule, x0, noise, t)
        with _autocast_or_null(autocast):
            pred = net(x_t, t, masks[:, None].float(), *extra)
        pred = pred.float()
        weight = None
        if self.mask_mode != "per-label-loss":
            loss = F.mse_loss(pred, target)
        else:
            shown = masks[:, None] > 0
            weight = torch.where(shown.flatten(1).any(dim=1)[:, None, None, None], shown, True).float()
            squared = (pred - target).square() * weight
            loss = squared.sum() / (weight.sum() * noise.shape[1]).clamp_min(1.0)
        if self.lattice_weight:
            estimate = x0_estimate(self.config.objective, self.schedule, x_t, pred, t)
            loss = loss + self.lattice_weight * lattice_penalty(estimate, self.config.pixel_unshuffle, weight)
        return loss, counts


class MaskObjective:
    """L2 loss of the class-conditioned mask (layout) model: on the noise (DiffInfinite's), or on
    v with ``objective: pred_v`` (as for image models)."""

    def __init__(self, config: ModelConfig, codec, *, cond_drop_prob: float = 0.1) -> None:
        if config.kind != "mask":
            raise TrainingError(f"MaskObjective needs a mask model config, not a {config.kind} model")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise TrainingError(f"condition dropout must be a probability in [0, 1], got {cond_drop_prob}")
        self.config = config
        self.codec = codec
        self.cond_drop_prob = cond_drop_prob
        self.timesteps = config.timesteps
        self.schedule = Schedule(1, 1.0, config.timesteps)
        self.num_labels = config.num_labels or len(config.class_names)
        self.num_conditions = config.unet.num_classes

    def mask_images(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, h, w) labels -> (B, 3, h, w) images in the model's ``mask_encoding``."""
        top = int(labels.max()) if labels.numel() else 0
        if top >= self.num_labels:
            raise TrainingError(f"a training mask has label {top} but the mask model has {self.num_labels} labels")
        return labels_to_image(labels, self.num_labels, self.config.mask_encoding)

    def loss(
        self,
        net: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, BranchCounts]:
        images = self.mask_images(batch["labels"]).to(device)
        with torch.no_grad():
            x0 = self.codec.encode(images).float()
        classes = batch["condition"].long()
        if len(classes) and int(classes.max()) >= self.num_conditions:
            raise TrainingError(
                f"mask-model condition {int(classes.max())} is out of range: the model has {self.num_conditions} "
                f"conditions ({', '.join(self.config.condition_names or [])})"
            )
        b = x0.shape[0]
        null = torch.rand(b, generator=generator) < self.cond_drop_prob
        t = torch.randint(0, self.timesteps, (b,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        counts = BranchCounts(conditional=int((~null).sum()), unconditional=int(null.sum()))
        for c in classes[~null].tolist():
            counts.per_label[int(c)] = counts.per_label.get(int(c), 0) + 1
        t, noise, classes, null = t.to(device), noise.to(device), classes.to(device), null.to(device)
        x_t = self.schedule.q_sample(x0, t, noise)
        target = regression_target(self.config.objective, self.schedule, x0, noise, t)
        with _autocast_or_null(autocast):
            pred = net(x_t, t, classes, null)
        return F.mse_loss(pred.float(), target), counts
