"""``diffinfinite train``: end to end on tiny tiles, --resume, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_diffinfinite.cli import main
from napari_diffinfinite.model.pretrained import load_model
from napari_diffinfinite.training.demo_data import BACKGROUND, DERMIS, EPIDERMIS, derive_labels
from napari_diffinfinite.training.metrics import compare

TINY = ["--classes", "pink,purple", "--dim", "8", "--dim-mults", "1,2", "--patch-size", "32", "--pixel-unshuffle", "2",
        "--batch-size", "2", "--num-samples", "1", "--sample-steps", "2", "--device", "cpu", "-q"]  # fmt: skip


def test_train_image_model_from_tiles_then_resume(tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "image", "--tiles", str(tiles), "--out", str(out), "--steps", "2", *TINY]) == 0
    printed, err = capsys.readouterr()
    assert "done at step 2" in printed and "diffinfinite generate" in printed
    # TINY's width 8 under a 2x2 unshuffle (12 channels): said once, the run goes on
    assert err.count("warning:") == 1 and "narrower than its 12 input channels" in err and "--dim 12" in err
    model = load_model(out / "model")
    assert model.config.class_names == ["unknown", "pink", "purple"] and model.config.patch_size == 32
    # resume without repeating the data or model options: the run remembers them
    assert main(["train", "image", "--out", str(out), "--resume", "--steps", "3", "-q"]) == 0
    assert "done at step 3" in capsys.readouterr().out
    settings = json.loads((out / "train-settings.json").read_text())
    assert settings["settings"]["steps"] == 3 and settings["data"]["tiles"] == [str(tiles)]


def test_train_mask_model_with_tissue_condition(tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "masks"
    args = ["train", "mask", "--tiles", str(tiles), "--out", str(out), "--steps", "2", "--condition", "tissue",
            "--classes", "background,pink,purple", "--dim", "8", "--patch-size", "16", "--pixel-unshuffle", "2",
            "--batch-size", "2", "--num-samples", "0", "--device", "cpu", "-q"]  # fmt: skip
    # the demo mask preset samples masks at 1/4 of the slide: 16 px masks need 64 px tiles
    assert main(args) == 1
    assert "smaller than one training tile of 64 px" in capsys.readouterr().err
    assert main([*args, "--mask-downsample", "2"]) == 0
    model = load_model(out / "model")
    assert model.config.kind == "mask" and model.config.condition_names == ["any", "tissue"]
    assert model.config.num_labels == 4 and model.config.mask_downsample == 2
    assert model.config.mask_encoding == "grey"


def test_mask_encoding_is_saved_and_refused_where_it_cannot_hold(tiles: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "mask", "--tiles", str(tiles), "--steps", "1", "--dim", "8", "--patch-size", "16",
            "--pixel-unshuffle", "2", "--mask-downsample", "2", "--batch-size", "2", "--num-samples", "1",
            "--sample-steps", "2", "--device", "cpu", "-q", "--mask-encoding", "one-hot"]  # fmt: skip
    assert main([*args, "--classes", "background,pink,purple", "--out", str(tmp_path / "one-hot")]) == 0
    assert load_model(tmp_path / "one-hot" / "model").config.mask_encoding == "one-hot"
    capsys.readouterr()
    assert main([*args, "--classes", "a,b,c,d", "--out", str(tmp_path / "five")]) == 1
    assert "at most 3 classes" in capsys.readouterr().err and not (tmp_path / "five").exists()
    image = ["train", "image", "--tiles", str(tiles), "--steps", "1", "--mask-encoding", "one-hot", *TINY]
    assert main([*image, "--out", str(tmp_path / "image")]) == 1
    assert "--mask-encoding is for mask models" in capsys.readouterr().err and not (tmp_path / "image").exists()


def test_bad_data_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", "image", "--tiles", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "error: no tiles found in" in err and "masks" in err
    assert main(["train", "image", "--out", str(tmp_path / "o2"), *TINY]) == 1
    assert "no training data" in capsys.readouterr().err


def test_demo_label_derivation_on_a_synthetic_section() -> None:
    """Glass, pale pink collagen and a dense band of purple nuclei -> the three demo classes."""
    rng = np.random.default_rng(0)
    image = np.full((200, 200, 3), 240, np.uint8)
    image[:, 60:] = (210, 110, 165)  # dermis: eosin
    image[:, 120:160] = (120, 60, 150)  # epidermis: haematoxylin
    image = np.clip(image.astype(int) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    derived = derive_labels(image, pixel_size_um=1.0, sigma_um=4.0, min_area_um2=200.0)
    labels = derived.labels
    assert (labels[:, 10:50] == BACKGROUND).mean() > 0.95
    assert (labels[:, 70:110] == DERMIS).mean() > 0.9
    assert (labels[:, 128:152] == EPIDERMIS).mean() > 0.9


def test_metrics_tell_an_image_from_noise() -> None:
    rng = np.random.default_rng(0)
    real = np.zeros((64, 64, 3), np.uint8)
    real[:, :32] = (230, 120, 170)
    real[:, 32:] = (110, 40, 140)
    labels = np.where(np.arange(64)[None, :] < 32, 1, 2).repeat(64, 0)
    same = compare(real, real, labels)
    assert same["colour_distance"] == 0 and same["texture_distance"] == 0 and same["class_colour_error"] == 0
    noise = compare(real, rng.integers(0, 256, real.shape).astype(np.uint8), labels)
    assert noise["colour_distance"] > 30 and noise["texture_distance"] > 10 and noise["class_colour_error"] > 30


@pytest.mark.parametrize("spec", ["5", "soft"])
def test_bad_condition_is_refused(tiles: Path, tmp_path: Path, capsys, spec: str) -> None:
    args = ["train", "mask", "--tiles", str(tiles), "--out", str(tmp_path / spec), "--condition", spec,
            "--classes", "background,pink,purple", "--steps", "1", "-q"]  # fmt: skip
    assert main(args) == 1
    assert "--condition" in capsys.readouterr().err


def test_lattice_weight_is_saved_and_refused_without_a_pixel_unshuffle(tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lattice"
    args = ["train", "image", "--tiles", str(tiles), "--steps", "1", "--lattice-weight", "5", *TINY]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "train-settings.json").read_text())["settings"]["lattice_weight"] == 5.0
    capsys.readouterr()
    # a later --pixel-unshuffle overrides TINY's 2
    assert main([*args, "--pixel-unshuffle", "1", "--out", str(tmp_path / "plain")]) == 1
    err = capsys.readouterr().err
    assert "lattice penalty" in err and "--lattice-weight" in err
    assert not (tmp_path / "plain").exists()


def test_layout_upsample_is_saved_and_refused_where_it_cannot_apply(tiles: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "mask", "--tiles", str(tiles), "--steps", "1", "--dim", "8", "--patch-size", "16",
            "--pixel-unshuffle", "2", "--mask-downsample", "2", "--batch-size", "2", "--num-samples", "0",
            "--device", "cpu", "-q", "--classes", "background,pink,purple"]  # fmt: skip
    out = tmp_path / "up"
    assert main([*args, "--mask-encoding", "one-hot", "--layout-upsample", "2", "--out", str(out)]) == 0
    assert load_model(out / "model").config.layout_upsample == 2
    # a user's model is not described as the embedded demo model
    assert load_model(out / "model").config.description == (
        "mask model trained with diffinfinite train (the demo preset's architecture)"
    )
    capsys.readouterr()
    assert main([*args, "--layout-upsample", "2", "--out", str(tmp_path / "grey")]) == 1  # grey levels
    assert "add --mask-encoding one-hot" in capsys.readouterr().err and not (tmp_path / "grey").exists()
    assert main([*args, "--mask-encoding", "one-hot", "--layout-upsample", "3", "--out", str(tmp_path / "3")]) == 1
    assert "--layout-upsample 3 must divide --mask-downsample (2)" in capsys.readouterr().err
    assert not (tmp_path / "3").exists()
    image = ["train", "image", "--tiles", str(tiles), "--steps", "1", "--layout-upsample", "2", *TINY]
    assert main([*image, "--out", str(tmp_path / "image")]) == 1
    assert "--layout-upsample is for mask models" in capsys.readouterr().err
    # from an existing mask model: the reading changes, the weights do not
    again = tmp_path / "again"
    assert main(["train", "mask", "--tiles", str(tiles), "--init", str(out / "model"), "--steps", "1",
                 "--layout-upsample", "1", "--batch-size", "2", "--num-samples", "0", "--device", "cpu", "-q",
                 "--out", str(again)]) == 0  # fmt: skip
    assert load_model(again / "model").config.layout_upsample == 1
