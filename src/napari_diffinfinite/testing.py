"""Tiny models and official-layout checkpoints for tests, examples and benchmarks.

Nothing here is used by the engine itself. The checkpoints reproduce the structure the
official trainer writes (``torch.save`` of ``{step, loss, lr, model, opt, scheduler, ema,
scaler}`` with EMA weights under ``ema_model.model.``, diffusion buffers beside them, and a
pickled scheduler object), so loading code is tested against the real layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .model.config import ModelConfig, UNetConfig, default_class_colors, default_class_names
from .model.pretrained import DiffusionModel, new_model, save_pretrained
from .sampling.schedule import cosine_alphas_cumprod


def tiny_image_config(num_classes: int = 3, codec: str = "identity", unshuffle: int = 4) -> ModelConfig:
    """A tiny image model that runs in milliseconds on a CPU.

    Pixel-space by default, with 4x4 pixel unshuffle (patches of 128 px = 32 positions), so
    that test slides of a few thousand pixels need only tens of patches per step.
    """
    channels = 4 if codec == "sd2-vae" else 3 * unshuffle**2
    return ModelConfig(
        kind="image",
        unet=UNetConfig(dim=8, dim_mults=(1, 2), channels=channels, num_classes=num_classes, resnet_block_groups=2),
        class_names=default_class_names(num_classes),
        class_colors=default_class_colors(num_classes),
        codec=codec,
        pixel_unshuffle=1 if codec == "sd2-vae" else unshuffle,
        patch_size=64 if codec == "sd2-vae" else 32 * unshuffle,
        sampling_steps=4,
        pixel_size_um=0.5,
    )


def tiny_mask_config(num_labels: int = 3) -> ModelConfig:
    return ModelConfig(
        kind="mask",
        unet=UNetConfig(dim=8, dim_mults=(1, 2), channels=3, num_classes=2, resnet_block_groups=2),
        class_names=default_class_names(num_labels),
        class_colors=default_class_colors(num_labels),
        codec="identity",
        patch_size=16,
        sampling_steps=4,
        num_labels=num_labels,
        condition_names=["any", "tissue"],
        mask_downsample=4,
    )


def write_tiny_model(folder: str | Path, kind: str = "image", seed: int = 0, **config_kwargs) -> Path:
    """Save a random-init tiny model in our folder format."""
    config = tiny_image_config(**config_kwargs) if kind == "image" else tiny_mask_config(**config_kwargs)
    return save_pretrained(new_model(config, seed=seed), folder)


def _diffusion_buffers() -> dict[str, torch.Tensor]:
    ac = cosine_alphas_cumprod().float()
    return {"betas": torch.zeros(1000), "alphas_cumprod": ac, "sqrt_alphas_cumprod": ac.sqrt()}


def official_checkpoint_dict(model: DiffusionModel, with_scheduler_object: bool = True) -> dict:
    """The dictionary the official trainer saves, around ``model``'s UNet weights."""
    unet_state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    diffusion = {**{f"model.{k}": v for k, v in unet_state.items()}, **_diffusion_buffers()}
    ema = {"initted": torch.tensor([True]), "step": torch.tensor([100])}
    ema.update({f"online_model.{k}": v for k, v in diffusion.items()})
    ema.update({f"ema_model.{k}": v for k, v in diffusion.items()})
    params = [torch.nn.Parameter(v.clone().float()) for v in unet_state.values() if v.is_floating_point()][:3]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=10)
    data = {
        "step": 100,
        "loss": [0.5, 0.25],
        "lr": [1e-4],
        "model": diffusion,
        "opt": opt.state_dict(),
        # torch 2.0 pickled the scheduler's state through a bound method, i.e. the object itself
        "scheduler": {"anneal_func": scheduler} if with_scheduler_object else scheduler.state_dict(),
        "ema": ema,
        "scaler": None,
    }
    return data


def write_official_checkpoint(path: str | Path, kind: str = "image", seed: int = 0, **config_kwargs) -> Path:
    """A random-init tiny model saved in the official ``model-N.pt`` layout."""
    config = tiny_image_config(**config_kwargs) if kind == "image" else tiny_mask_config(**config_kwargs)
    if kind == "image" and config.codec == "identity":
        # official image checkpoints are SD-VAE latent models with 4 channels
        config = tiny_image_config(num_classes=config.unet.num_classes, codec="sd2-vae")
    if kind == "mask":
        unet = UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=2, resnet_block_groups=2)
        config = ModelConfig(**{**config.__dict__, "unet": unet, "codec": "sd2-vae", "patch_size": 128})
    model = new_model(config, seed=seed)
    path = Path(path)
    torch.save(official_checkpoint_dict(model), path)
    return path
