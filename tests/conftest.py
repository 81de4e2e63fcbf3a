"""Shared fixtures: tiny random-init models in our format and in the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_diffinfinite.model.codec import IdentityCodec
from napari_diffinfinite.model.pretrained import load_model
from napari_diffinfinite.testing import write_official_checkpoint, write_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_image_model_dir(tmp_path_factory):
    """A random-init tiny pixel-space image model (3 classes) in our folder format."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "image", kind="image")


@pytest.fixture(scope="session")
def tiny_mask_model_dir(tmp_path_factory):
    """A random-init tiny pixel-space mask model (3 label levels) in our folder format."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "mask", kind="mask")


@pytest.fixture(scope="session")
def official_image_checkpoint(tmp_path_factory):
    """A tiny image model saved as the official trainer saves model-N.pt."""
    return write_official_checkpoint(tmp_path_factory.mktemp("official") / "model-1.pt", kind="image")


@pytest.fixture(scope="session")
def official_mask_checkpoint(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("official") / "model-5.pt", kind="mask")


@pytest.fixture
def tiny_image_model(tiny_image_model_dir):
    return load_model(tiny_image_model_dir)


@pytest.fixture
def tiny_mask_model(tiny_mask_model_dir):
    return load_model(tiny_mask_model_dir)


@pytest.fixture
def identity_codec(tiny_image_model):
    """The codec of the tiny image model (pixel space, 4x4 unshuffle)."""
    return IdentityCodec(tiny_image_model.config.pixel_unshuffle)


@pytest.fixture
def mask_codec(tiny_mask_model):
    return IdentityCodec(tiny_mask_model.config.pixel_unshuffle)


@pytest.fixture
def two_class_canvas():
    """A small label canvas with labels 0, 1 and 2 in blocks."""
    canvas = np.zeros((12, 16), np.uint8)
    canvas[:, 6:] = 1
    canvas[7:, 10:] = 2
    return canvas
