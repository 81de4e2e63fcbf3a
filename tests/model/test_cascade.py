"""Cascade stages: config validation, the network's extra input, the one loader, and the
lower-level condition (index math shared by the trainer and the sampler)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.model.cascade import block_mean, condition_field, condition_index, gather_condition
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import load_model, new_model, save_pretrained
from napari_diffinfinite.sampling.canvas import ConditionCanvas
from napari_diffinfinite.slide.pyramid import downsample_image
from napari_diffinfinite.training.configs import make_model_config

TINY = {"dim": 8, "dim_mults": (1, 2), "resnet_block_groups": 2, "attention_heads": 1, "attention_dim_head": 8}


def cascade_config(condition: str = "image", scale: int = 2, objective: str = "pred_v") -> ModelConfig:
    return make_model_config("image", class_names="pink,purple", unet=TINY, patch_size=32, pixel_unshuffle=2,
                             sampling_steps=3, cascade={"parent_scale": scale, "condition": condition},
                             objective=objective)  # fmt: skip


def test_cascade_config_validates_and_round_trips(tmp_path: Path) -> None:
    config = cascade_config()
    assert config.unet.condition_channels == 12 and config.objective == "pred_v"  # 3 * 2 * 2 pixels per latent px
    assert cascade_config("latent").unet.condition_channels == 12  # the latent's 12 channels
    model = new_model(config, seed=0)
    folder = save_pretrained(model, tmp_path / "stage")
    loaded = load_model(folder)
    assert loaded.config.cascade == {"parent_scale": 2, "condition": "image"}
    assert loaded.unet.init_conv.in_channels == 24
    # a single-scale model's config.json is unchanged: no cascade keys
    plain = make_model_config("image", class_names="pink,purple", unet=TINY, patch_size=32, pixel_unshuffle=2)
    assert "cascade" not in plain.to_dict() and "condition_channels" not in plain.to_dict()["unet"]

    data = config.to_dict()
    for cascade, unet_extra, message in [
        ({"parent_scale": 3, "condition": "image"}, 12, "parent_scale must be one of 2, 4, 8"),
        ({"parent_scale": 2, "condition": "rgb"}, 12, "cascade.condition must be 'image' or 'latent'"),
        ({"parent_scale": 2, "condition": "image"}, 4, "needs unet.condition_channels = 12, not 4"),
        (None, 12, "only for cascade models"),
    ]:
        bad = {**data, "cascade": cascade, "unet": {**data["unet"], "condition_channels": unet_extra}}
        with pytest.raises(CheckpointError, match=message):
            ModelConfig.from_dict(bad)
    with pytest.raises(CheckpointError, match="pred_noise or pred_v"):
        ModelConfig.from_dict({**data, "objective": "pred_x0"})


def test_network_needs_its_condition() -> None:
    unet = new_model(cascade_config(), seed=0).unet
    x, t, mask = torch.zeros(2, 12, 16, 16), torch.zeros(2, dtype=torch.long), torch.ones(2, 1, 16, 16)
    assert unet(x, t, mask, torch.zeros(2, 12, 16, 16)).shape == (2, 12, 16, 16)
    with pytest.raises(ValueError, match="needs the lower level"):
        unet(x, t, mask)


def test_condition_is_the_lower_level_under_every_pixel() -> None:
    """condition_field = nearest upsampling by ``scale`` then pixel-unshuffle by ``sub``."""
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.standard_normal((2, 3, 5, 7)).astype(np.float32))
    scale, sub, shape = 2, 4, (3, 4)  # latent 3 x 4 = 12 x 16 px, lower level 5 x 7 covers it (clamped edges)
    field = condition_field(source, shape, sub=sub, scale=scale)
    ys = (torch.arange(shape[0] * sub) // scale).clamp(max=4)  # past the lower level: its last row/column
    xs = (torch.arange(shape[1] * sub) // scale).clamp(max=6)
    up = source[:, :, ys][:, :, :, xs]
    assert torch.equal(field, torch.pixel_unshuffle(up, sub))
    # the sampler's per-window gather: the same values at the same positions, any window origin
    canvas = ConditionCanvas(source[1], scale=scale, sub=sub, device=torch.device("cpu"))
    rows, cols = torch.tensor([[1, 2]]), torch.tensor([[2, 3]])
    window = canvas.gather(rows, cols)[:, 0]
    assert torch.equal(window, field[1][:, 1:3, 2:4])
    index = condition_index(rows, cols, sub=sub, scale=scale, source_shape=(5, 7))
    assert torch.equal(gather_condition(source[1].reshape(3, -1), index)[:, 0], window)


@pytest.mark.parametrize("offset", [(0, 0), (1, 0), (1, 1)])
def test_block_mean_is_the_pyramid_level(offset: tuple[int, int]) -> None:
    """The trainer's lower level of a tile equals the slide pyramid's, to the pixel."""
    rng = np.random.default_rng(1)
    slide = rng.integers(0, 256, (3, 20, 26), dtype=np.uint8)
    pyramid = downsample_image(slide, 2).astype(np.float64)
    oy, ox = offset
    tile = slide[:, 2 + oy : 16 + oy, 4 + ox : 18 + ox]  # a crop starting at an odd pixel when offset is 1
    low = block_mean(torch.from_numpy(tile[None].astype(np.float64)), 2, offset)[0].numpy()
    # whole blocks of the crop are exactly the pyramid's (partial edge blocks average what the crop has)
    inner = low[:, 1:-1, 1:-1]
    expected = pyramid[
        :, 2 : 2 + inner.shape[1], 3 : 3 + inner.shape[2]
    ]  # tile block b is pyramid block (1 + b, 2 + b)
    assert np.all(np.abs(inner - expected) <= 0.5)  # the pyramid rounds its means to uint8
    assert np.array_equal(np.floor(inner + 0.5), expected)
