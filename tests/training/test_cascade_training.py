"""Training a cascade stage: the (lower level, tile, labels) pairs are right to the pixel, and
``diffinfinite train --cascade-from`` runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffinfinite.cli import main
from napari_diffinfinite.model.codec import make_codec
from napari_diffinfinite.model.pretrained import load_model, new_model
from napari_diffinfinite.slide.pyramid import downsample_image
from napari_diffinfinite.training.configs import make_model_config
from napari_diffinfinite.training.objectives import ImageObjective

from .conftest import TINY_UNET
from .test_cli import TINY


def _stage(condition: str = "image"):
    return make_model_config("image", class_names="pink,purple", unet=TINY_UNET, patch_size=32, pixel_unshuffle=2,
                             cascade={"parent_scale": 2, "condition": condition}, objective="pred_v")  # fmt: skip


def test_condition_pairs_match_a_known_lower_level() -> None:
    """A tile made by 2x nearest upsampling of a known lower level L: the condition the network
    gets is L under every pixel (phase 0), and at phase 1 it is the slide pyramid's level 1."""
    config = _stage()
    objective = ImageObjective(config, make_codec("identity", pixel_unshuffle=2))
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    slide = low.repeat(2, axis=1).repeat(2, axis=2)  # (3, 32, 32), its level 1 is exactly ``low``
    assert np.array_equal(downsample_image(slide, 2), low)
    images = torch.from_numpy(slide[None].astype(np.float32) / 255)
    g = torch.Generator().manual_seed(0)
    cond = objective.cascade_condition(images, (16, 16), g, torch.device("cpu"), offset=(0, 0))
    assert cond.shape == (1, 12, 16, 16)
    # latent pixel (r, c) covers tile pixels 2r..2r+1: all on lower-level pixel (r, c)
    expected = torch.from_numpy(low.astype(np.float32) / 255 * 2 - 1)
    for sub in range(4):
        assert torch.allclose(cond[0, sub::4], expected, atol=1e-6)
    # phase 1: a tile that starts one pixel into a block of the slide's pyramid
    big = rng.integers(0, 256, (3, 34, 34), dtype=np.uint8)
    level1 = downsample_image(big, 2).astype(np.float32) / 255 * 2 - 1
    tile = torch.from_numpy(big[None, :, 1:33, 1:33].astype(np.float32) / 255)
    cond = objective.cascade_condition(tile, (16, 16), g, torch.device("cpu"), offset=(1, 1))
    # tile pixel y is slide pixel y + 1, on level-1 pixel (y + 1) // 2; the interior blocks are whole
    inner = cond[0, 0, 1:-1, 1:-1].numpy()  # sub-pixel (0, 0) of latent pixel r = tile pixel 2r
    ys = (2 * np.arange(1, 15) + 1) // 2
    assert np.allclose(inner, level1[0][np.ix_(ys, ys)], atol=1 / 255)


@pytest.mark.slow
def test_v_objective_and_latent_condition_train() -> None:
    for condition in ("image", "latent"):
        config = _stage(condition)
        model = new_model(config, seed=0)
        objective = ImageObjective(config, make_codec("identity", pixel_unshuffle=2))
        batch = {"image": torch.rand(2, 3, 32, 32), "labels": torch.ones(2, 16, 16, dtype=torch.uint8)}
        loss, _ = objective.loss(model.unet, batch, torch.Generator().manual_seed(0), torch.device("cpu"))
        loss.backward()
        assert torch.isfinite(loss) and model.unet.init_conv.weight.grad[:, 12:].abs().sum() > 0


@pytest.mark.slow
def test_train_cli_cascade_stage(tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "stage"
    args = ["train", "image", "--tiles", str(tiles), "--out", str(out), "--steps", "2", "--cascade-from", "2", *TINY]
    assert main(args) == 0
    model = load_model(out / "model")
    assert model.config.cascade == {"parent_scale": 2, "condition": "image"} and model.config.objective == "pred_v"
    assert (out / "model" / "samples.png").is_file()  # the preview sampled with a lower level
    assert main(["train", "mask", "--tiles", str(tiles), "--out", str(tmp_path / "m"), "--cascade-from", "2",
                 *TINY]) == 1  # fmt: skip
    assert "image models only" in capsys.readouterr().err
