"""Tiled decoding against one whole decode, on an SD-2-architecture VAE at random weights.

The SD-2 VAE decoder is not local (GroupNorm statistics over its whole input, a mid-block
self-attention), so tiles decoded separately can shift in tone. This decodes a random
latent once whole and once with :func:`~napari_diffinfinite.sampling.decode.decode_tiles`
(``faithful``: with the whole latent's GroupNorm statistics, ``VAECodec.tile_decoder``;
else tile by tile as they come) and reports the difference in grey levels (0-255).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..model.codec import VAECodec
from ..sampling.decode import decode_tiles

SD2_BLOCKS = (128, 256, 512, 512)


def sd2_vae(blocks: tuple[int, ...] = SD2_BLOCKS, layers: int = 2, groups: int = 32, seed: int = 0):
    """A randomly initialised ``AutoencoderKL`` of the SD-2 VAE architecture (block widths ``blocks``)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        block_out_channels=list(blocks), layers_per_block=layers, norm_num_groups=groups, sample_size=512,
    ).eval()  # fmt: skip


@torch.no_grad()
def tiled_vs_whole(
    latent_side: int = 96,
    tile: int = 256,
    *,
    blocks: tuple[int, ...] = SD2_BLOCKS,
    layers: int = 2,
    groups: int = 32,
    margin: int = 16,
    faithful: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Grey-level difference (mean, max) between a tiled and a whole decode of one random latent."""
    codec = VAECodec(sd2_vae(blocks, layers, groups, seed).to(device))
    latent = torch.randn(4, latent_side, latent_side, generator=torch.Generator().manual_seed(seed + 1)) / 50
    latent = latent.to(device)
    side = latent_side * 8
    started = time.perf_counter()
    whole = codec.decode(latent[None])[0].cpu().numpy()
    whole_seconds = time.perf_counter() - started
    expected = np.clip(np.rint(whole * 255), 0, 255)
    tiled = np.zeros((3, side, side), np.float64)

    def write(y0: int, x0: int, rgb: np.ndarray) -> None:
        tiled[:, y0 : y0 + rgb.shape[1], x0 : x0 + rgb.shape[2]] = rgb

    started = time.perf_counter()
    decode = codec.tile_decoder(latent) if faithful else codec.decode
    decode_tiles(latent, decode, scale=8, image_shape=(side, side), write=write, tile=tile, margin=margin)
    difference = np.abs(tiled - expected)
    return {
        "latent": latent_side,
        "tile": tile,
        "blocks": list(blocks),
        "groups": groups,
        "margin": margin,
        "faithful": faithful,
        "mean_grey_difference": float(difference.mean()),
        "max_grey_difference": float(difference.max()),
        "whole_seconds": whole_seconds,
        "tiled_seconds": time.perf_counter() - started,
    }
