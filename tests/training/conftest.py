"""Tiny generated training data and a tiny model configuration for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.training.configs import make_model_config

TINY_UNET = {"dim": 8, "dim_mults": (1, 2), "resnet_block_groups": 2, "attention_heads": 1, "attention_dim_head": 8}
COLOURS = {0: (250, 250, 250), 1: (220, 120, 170), 2: (110, 40, 140)}


def tile_and_mask(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A tile whose colour follows its labels: class 1 pink, class 2 purple (plus noise)."""
    labels = np.ones((size, size), np.uint8)
    cut = 2 * int(rng.integers(size // 8, 3 * size // 8))  # even: 2 x 2 blocks never straddle classes
    labels[:, cut:] = 2
    if rng.random() < 0.5:
        labels = labels.T.copy()
    image = np.zeros((size, size, 3), np.uint8)
    for value, colour in COLOURS.items():
        image[labels == value] = colour
    noise = rng.integers(-15, 16, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8), labels


def write_tiles(folder: Path, n: int = 6, labelled: int = 3, size: int = 32, seed: int = 0) -> Path:
    """``n`` tiles in ``folder``, the first ``labelled`` of them with masks in ``folder/masks``."""
    rng = np.random.default_rng(seed)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, labels = tile_and_mask(rng, size)
        Image.fromarray(image).save(folder / f"tile{i}.png")
        if i < labelled:
            Image.fromarray(labels).save(folder / "masks" / f"tile{i}.png")
    return folder


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    return write_tiles(tmp_path / "tiles")


@pytest.fixture
def image_config():
    return make_model_config("image", class_names="pink,purple", unet=TINY_UNET, patch_size=32, pixel_unshuffle=2,
                             sampling_steps=3)  # fmt: skip


@pytest.fixture
def mask_config():
    return make_model_config("mask", class_names="background,pink,purple", condition_names=["any", "tissue"],
                             unet={**TINY_UNET, "dim_mults": (1, 2)}, patch_size=16, pixel_unshuffle=2,
                             mask_downsample=2, sampling_steps=3)  # fmt: skip
