"""Cheap RGB previews of a sampler's current x0 prediction.

Pixel-space predictions are decoded exactly (it costs nothing). SD-2 VAE latents are
mapped to colour with a fixed linear approximation of the decoder (a widely used 4x3
matrix for Stable Diffusion latents), far cheaper than running the VAE on every step.
"""

from __future__ import annotations

import numpy as np
import torch

# Approximate RGB contribution of each SD latent channel (for latents scaled by 0.18215).
_SD_LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)
_SD_SCALING = 0.18215


def preview_rgb(x0: torch.Tensor, codec) -> np.ndarray:
    """(C, h, w) prediction -> (h', w', 3) uint8 image."""
    if codec.name == "identity":
        rgb = codec.decode(x0[None].float())[0]
    else:
        raw = x0.float() * getattr(codec, "latent_scale", 50.0) * _SD_SCALING
        rgb = torch.einsum("chw,cr->rhw", raw, _SD_LATENT_RGB.to(raw.device))
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    return (rgb.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
