"""Sample images written next to every checkpoint, to see what a model has learnt.

Image models: for a few fixed training tiles, a row ``[real tile | its labels | sample]``,
the sample drawn by the same parallel random-patch DDIM sampler as ``diffinfinite
generate``, conditioned on the tile's own label map. Mask models: ``[real layout |
sampled mask image | sampled layout]`` conditioned on the tile's condition. Tiles and noise
are fixed by the seed, so successive checkpoints show the same rows.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..model.cascade import block_mean
from ..model.config import ModelConfig
from ..model.mask_encoding import image_to_labels
from ..sampling.canvas import ConditionCanvas
from ..sampling.guidance import ClassGuidedDenoiser
from ..sampling.sampler import RandomPatchSampler


def colour_labels(labels: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(h, w) labels -> (h, w, 3) uint8 with each class's colour (unknown labels grey)."""
    palette = np.full((256, 3), 128, np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8)
    return palette[labels]


def _upscale(array: np.ndarray, size: int) -> np.ndarray:
    f = size // array.shape[0]
    return np.repeat(np.repeat(array, f, axis=0), f, axis=1) if f > 1 else array


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def sample_image_tiles(
    unet: torch.nn.Module,
    config: ModelConfig,
    codec,
    labels: np.ndarray,
    *,
    seed: int = 0,
    steps: int | None = None,
    omega: float = 3.0,
    device: str | torch.device = "cpu",
    images: list[torch.Tensor] | None = None,
) -> list[np.ndarray]:
    """One (H, W, 3) uint8 sample per (h, w) latent-resolution label map in ``labels``.

    A cascade stage is conditioned on the lower level of the real tiles ``images``
    ((3, H, W) in [0, 1]), so its row shows what it makes of a known lower level."""
    was_training = unet.training
    unet.eval()
    out = []
    try:
        for i, tile_labels in enumerate(labels):
            patch = min(config.latent_patch, *tile_labels.shape)  # tiles may be crops smaller than a patch
            sampler = RandomPatchSampler(
                unet, channels=codec.latent_channels, patch=patch, steps=steps or config.sampling_steps,
                omega=omega, eta=config.eta, seed=seed + i, batch_size=8, device=device, timesteps=config.timesteps,
                prediction=config.objective,
            )  # fmt: skip
            shape = tuple(tile_labels.shape)
            condition = None if config.cascade is None else _lower_level(config, codec, images[i], device)
            state = sampler.run(
                sampler.initial_state(shape), np.ascontiguousarray(tile_labels, np.uint8), condition=condition
            )
            out.append(_to_uint8(codec.decode(state.latent[None].to(device))[0]))
    finally:
        unet.train(was_training)
    return out


def _lower_level(config: ModelConfig, codec, image: torch.Tensor, device) -> ConditionCanvas:
    """The condition of a cascade stage from a real tile: its block mean, as the trainer builds it."""
    scale = int(config.cascade["parent_scale"])
    low = block_mean(image[None].float().to(device), scale)
    if config.cascade["condition"] == "image":
        return ConditionCanvas((low * 2 - 1)[0], scale=scale, sub=config.scale_factor, device=torch.device(device))
    return ConditionCanvas(codec.encode(low).float()[0], scale=scale, sub=1, device=torch.device(device))


@torch.no_grad()
def sample_mask_tiles(
    unet: torch.nn.Module,
    config: ModelConfig,
    codec,
    conditions: list[int],
    *,
    seed: int = 0,
    steps: int | None = None,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """One (3, H, W) float mask image in [0, 1] per condition (no guidance, as upstream)."""
    was_training = unet.training
    unet.eval()
    out = []
    try:
        for i, condition in enumerate(conditions):
            sampler = RandomPatchSampler(
                unet, channels=codec.latent_channels, patch=config.latent_patch, steps=steps or config.sampling_steps,
                omega=0.0, eta=config.eta, seed=seed + i, batch_size=8, device=device, timesteps=config.timesteps,
                denoiser_class=ClassGuidedDenoiser, prediction=config.objective,
            )  # fmt: skip
            shape = (config.latent_patch, config.latent_patch)
            state = sampler.run(sampler.initial_state(shape), np.full(shape, condition, np.uint8))
            out.append(codec.decode(state.latent[None].to(device))[0].float().cpu().numpy())
    finally:
        unet.train(was_training)
    return out


def image_preview(
    unet: torch.nn.Module, config: ModelConfig, codec, items: list[dict], *, seed: int, steps: int | None,
    omega: float, device,
) -> np.ndarray:  # fmt: skip
    """Rows of [real tile | labels | sample] for dataset ``items`` (see the module docstring)."""
    labels = np.stack([item["labels"].numpy().astype(np.uint8) for item in items])
    samples = sample_image_tiles(unet, config, codec, labels, seed=seed, steps=steps, omega=omega, device=device,
                                 images=[item["image"] for item in items])  # fmt: skip
    rows = []
    for item, sample in zip(items, samples):
        real = _to_uint8(item["image"])
        size = real.shape[0]
        lab = _upscale(colour_labels(item["labels"].numpy().astype(np.uint8), config.class_colors), size)
        rows.append(np.concatenate([real, lab, sample], axis=1))
    return np.concatenate(rows, axis=0)


def mask_preview(
    unet: torch.nn.Module, config: ModelConfig, codec, items: list[dict], *, seed: int, steps: int | None, device
) -> np.ndarray:
    """Rows of [real layout | sampled mask image | sampled layout] for dataset ``items``."""
    num_labels = config.num_labels or len(config.class_names)
    conditions = [int(item["condition"]) for item in items]
    greys = sample_mask_tiles(unet, config, codec, conditions, seed=seed, steps=steps, device=device)
    rows = []
    for item, grey in zip(items, greys):
        real = colour_labels(item["labels"].numpy().astype(np.uint8), config.class_colors)
        grey_rgb = (np.clip(grey.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
        sampled = colour_labels(image_to_labels(grey, num_labels, config.mask_encoding), config.class_colors)
        size = max(real.shape[0], grey_rgb.shape[0])
        rows.append(np.concatenate([_upscale(real, size), _upscale(grey_rgb, size), _upscale(sampled, size)], axis=1))
    return np.concatenate(rows, axis=0)


def save_png(image: np.ndarray, path) -> None:
    Image.fromarray(image).save(path)
