"""The multi-magnification cascade in the engine: positions aligned to the pixel (an analytic
stage that copies its condition), coarse levels shown first, resume mid-cascade bit for bit,
odd slide sizes at every level, and clear refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_diffinfinite.engine import GenerateRequest, GenerateSettings, run_generate
from napari_diffinfinite.engine.cascade import level_seed
from napari_diffinfinite.engine.layout import LayoutSource
from napari_diffinfinite.errors import SettingsError, StoreError
from napari_diffinfinite.model.config import UNetConfig
from napari_diffinfinite.model.pretrained import DiffusionModel, new_model
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.sampling.schedule import cosine_alphas_cumprod
from napari_diffinfinite.slide.pyramid import downsample_image
from napari_diffinfinite.slide.store import SlideStore
from napari_diffinfinite.training.configs import make_model_config

TINY = {"dim": 8, "dim_mults": (1, 2), "resnet_block_groups": 2, "attention_heads": 1, "attention_dim_head": 8}
SETTINGS = GenerateSettings(steps=3, seed=5, device="cpu", batch_size=64, checkpoint_every_s=3600)


def _config(cascade: dict | None = None, objective: str = "pred_noise"):
    return make_model_config("image", class_names="pink,purple", unet=TINY, patch_size=32, pixel_unshuffle=2,
                             sampling_steps=3, cascade=cascade, objective=objective)  # fmt: skip


def low_model() -> DiffusionModel:
    return new_model(_config(), seed=1, source="tiny low")


def stage_model(seed: int = 2) -> DiffusionModel:
    return new_model(_config({"parent_scale": 2, "condition": "image"}, "pred_v"), seed=seed, source="tiny stage")


class CopyCondition(nn.Module):
    """An analytic cascade stage: predicts the noise that makes x0 its condition (the upsampled
    lower level), so the level it samples is the level below, upsampled, whatever the noise."""

    def __init__(self, config: UNetConfig, timesteps: int) -> None:
        super().__init__()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter: the model has a device and dtype
        self.alphas = cosine_alphas_cumprod(timesteps).float()

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * condition) / (1 - a).sqrt()


def copy_stage() -> DiffusionModel:
    config = _config({"parent_scale": 2, "condition": "image"})  # image condition == latent layout (identity codec)
    return DiffusionModel(config, CopyCondition(config.unet, config.timesteps), "copy", "analytic copy stage")


def level0(path: Path) -> np.ndarray:
    with SlideStore.open(path) as store:
        return np.asarray(store.image_level(0)[:])


@pytest.mark.slow
def test_high_level_downsampled_is_the_low_level(tmp_path: Path) -> None:
    """Odd sizes: 601 x 531 px over a 301 x 266 px lower level. The copy stage reproduces the
    lower level under every pixel, so the 2x block mean of the slide is the lower level
    exactly, and that lower level is the single-scale slide of the low model (same seed).
    While the higher level samples, the store's level 1 already shows the lower level. Each level
    samples with its own model's guidance: the low model's default (0.5) is not the stage's (3)."""
    low = low_model()
    low.config.default_omega = 0.5
    layout = LayoutSource(label=1)
    fast = dataclasses.replace(SETTINGS, steps=2)
    single = run_generate(GenerateRequest(out=tmp_path / "low.zarr", size=(301, 266), image_model=low,
                                          layout=layout, settings=fast))  # fmt: skip
    expected = level0(single.path)
    out = tmp_path / "c.zarr"
    seen = {}

    def progress(event) -> None:
        if event.stage == "sample" and event.message.startswith("level 2/2") and "coarse" not in seen:
            with SlideStore.open(out) as store:
                seen["coarse"] = np.asarray(store.image_level(1)[:])

    store = run_generate(GenerateRequest(out=out, size=(601, 531), cascade=[low, copy_stage()], layout=layout,
                                         settings=fast), progress=progress)  # fmt: skip
    slide = level0(store.path)
    assert slide.shape == (3, 601, 531)
    assert np.array_equal(downsample_image(slide, 2), expected)
    assert np.array_equal(seen["coarse"], expected)  # shown before the higher level was written
    assert expected.std() > 0  # a random network's slide: not a constant that would match anyway
    provenance = store.provenance
    assert provenance["complete"] and [lv["downscale"] for lv in provenance["cascade"]] == [2, 1]
    assert provenance["cascade"][0]["seed"] == 5 and provenance["cascade"][1]["seed"] == level_seed(5, 1)
    assert [lv["omega"] for lv in provenance["cascade"]] == [0.5, 3.0] and provenance["omega"] == 3.0


@pytest.mark.slow
def test_resume_mid_cascade_is_bit_exact(tmp_path: Path) -> None:
    """Interrupted in the lower level, then in the higher one, and resumed each time: the same
    slide as an uninterrupted run (odd sizes: 75 x 67 px over 38 x 34 px)."""
    size = (75, 67)
    layout = LayoutSource(label=2)
    low, stage = low_model(), stage_model()
    low.sha256, stage.sha256 = "low", "stage"  # what loading a model folder records
    low.config.default_omega = 0.0  # each level its own guidance, kept on resume
    whole = run_generate(GenerateRequest(out=tmp_path / "a.zarr", size=size, cascade=[low, stage], layout=layout,
                                         settings=SETTINGS))  # fmt: skip
    reference = level0(whole.path)

    out = tmp_path / "b.zarr"

    def interrupt_at(prefix: str):
        token = CancelToken()

        def progress(event) -> None:
            if event.stage == "sample" and event.message.startswith(prefix):
                token.cancel()

        return progress, token

    progress, token = interrupt_at("level 1/2 (1/2 magnification): step 2/3")
    with pytest.raises(Cancelled):
        run_generate(GenerateRequest(out=out, size=size, cascade=[low, stage], layout=layout, settings=SETTINGS),
                     progress=progress, cancel=token)  # fmt: skip
    with SlideStore.open(out) as store:
        _arrays, meta = store.load_state()
    assert meta["cascade_level"] == 0 and meta["step"] == 2  # cancelled at the next batch: step 3 of 3
    progress, token = interrupt_at("level 2/2 (full): step 2/3")
    with pytest.raises(Cancelled):
        run_generate(GenerateRequest(out=out, cascade=[low, stage], resume=True, settings=SETTINGS),
                     progress=progress, cancel=token)  # fmt: skip
    with SlideStore.open(out) as store:
        arrays, meta = store.load_state()
    assert meta["cascade_level"] == 1 and meta["step"] == 2 and arrays["parent"].shape == (3, 38, 34)
    with pytest.raises(StoreError, match="cascade slide"):
        run_generate(GenerateRequest(out=out, image_model=low, resume=True, settings=SETTINGS))
    other = stage_model(seed=3)
    other.sha256 = "other"
    with pytest.raises(StoreError, match="other models"):
        run_generate(GenerateRequest(out=out, cascade=[low, other], resume=True, settings=SETTINGS))
    done = run_generate(GenerateRequest(out=out, cascade=[low, stage], resume=True, settings=SETTINGS))
    assert np.array_equal(level0(done.path), reference)
    assert [lv["omega"] for lv in done.provenance["cascade"]] == [0.0, 3.0]


def test_bad_cascades_are_refused(tmp_path: Path) -> None:
    low, stage = low_model(), stage_model()
    layout = LayoutSource(label=1)
    for models, message in [
        ([low], "2 to 4 models"),
        ([stage, low], "comes first"),
        ([low, low], "is not a cascade stage"),
    ]:
        with pytest.raises(SettingsError, match=message):
            run_generate(GenerateRequest(out=tmp_path / "x.zarr", size=(80, 80), cascade=models, layout=layout,
                                         settings=SETTINGS))  # fmt: skip
    with pytest.raises(SettingsError, match="is a cascade stage"):
        run_generate(GenerateRequest(out=tmp_path / "x.zarr", size=(80, 80), image_model=stage, layout=layout,
                                     settings=SETTINGS))  # fmt: skip
    with pytest.raises(SettingsError, match="give the cascade a layout"):
        run_generate(GenerateRequest(out=tmp_path / "x.zarr", size=(80, 80), cascade=[low, stage], settings=SETTINGS))
    assert not (tmp_path / "x.zarr").exists()  # nothing left behind


@pytest.mark.slow
def test_cli_generate_cascade(tmp_path: Path, capsys) -> None:
    from napari_diffinfinite.cli import main
    from napari_diffinfinite.model.pretrained import save_pretrained

    low = save_pretrained(low_model(), tmp_path / "low")
    stage = save_pretrained(stage_model(), tmp_path / "stage")
    (tmp_path / "cascade.json").write_text('{"models": ["low", "stage"]}')
    common = ["--size", "67x75", "--label", "1", "--steps", "2", "--device", "cpu", "--batch-size", "64", "-q"]
    assert main(["generate", "--out", str(tmp_path / "a.zarr"), "--cascade", str(low), str(stage), *common]) == 0
    printed = capsys.readouterr().out
    assert "cascade level 1 (1/2 magnification)" in printed and "cascade level 2 (1/1 magnification)" in printed
    assert (
        main(["generate", "--out", str(tmp_path / "b.zarr"), "--cascade", str(tmp_path / "cascade.json"), *common]) == 0
    )
    assert np.array_equal(level0(tmp_path / "a.zarr"), level0(tmp_path / "b.zarr"))
    capsys.readouterr()
    assert (
        main(["generate", "--out", str(tmp_path / "c.zarr"), "--model", str(low), "--cascade", str(stage), *common])
        == 1
    )
    assert "not both" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "d.zarr"), "--model", str(stage), *common]) == 1
    assert "is a cascade stage" in capsys.readouterr().err


class PaintLabels(nn.Module):
    """An analytic lowest level: x0 is white (glass) on label 1 and grey on label 2."""

    def __init__(self, config: UNetConfig, timesteps: int) -> None:
        super().__init__()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(1))
        self.alphas = cosine_alphas_cumprod(timesteps).float()

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        x0 = torch.where(mask == 1, 1.0, torch.where(mask == 2, -0.4, 0.0)).expand_as(x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


@pytest.mark.slow
def test_glass_skipping_copies_the_lower_level(tmp_path: Path) -> None:
    """Windows wholly on glass of the lower level skip the network and come out as the level
    below, upsampled: the same slide as sampling them with a stage that copies its condition."""
    config = _config()
    low = DiffusionModel(config, PaintLabels(config.unet, config.timesteps), "paint", "analytic low level")
    canvas = np.full((40, 40), 2, np.uint8)
    canvas[:, :24] = 1  # glass on the left 60 %
    layout = LayoutSource(canvas=canvas)
    settings = GenerateSettings(steps=3, seed=1, omega=0.0, device="cpu", batch_size=64, checkpoint_every_s=3600)
    slides = []
    for skip in (False, True):
        request = GenerateRequest(out=tmp_path / f"{skip}.zarr", size=(160, 150), cascade=[low, copy_stage()],
                                  layout=layout, settings=settings, skip_glass=skip)  # fmt: skip
        store = run_generate(request)
        slides.append(level0(store.path))
        stats = store.provenance["cascade_stats"][1]
        assert (stats["glass_patches_skipped"] > 0) == skip
        assert store.provenance["skip_glass"] == skip
    assert np.array_equal(slides[0], slides[1])
    assert slides[1][:, :, :80].min() > 240 and slides[1][:, :, 100:].max() < 100  # glass and grey tissue
    stage = new_model(_config({"parent_scale": 2, "condition": "latent"}, "pred_v"), seed=2)
    with pytest.raises(SettingsError, match="leave out --skip-glass"):
        run_generate(GenerateRequest(out=tmp_path / "x.zarr", size=(80, 80), cascade=[low, stage], layout=layout,
                                     settings=settings, skip_glass=True))  # fmt: skip


def test_a_cascade_and_a_diffusers_pipeline_are_refused_together(tmp_path):
    from napari_diffinfinite.engine import DiffusersOptions, GenerateRequest
    from napari_diffinfinite.engine.request import validate
    from napari_diffinfinite.errors import SettingsError

    request = GenerateRequest(
        out=tmp_path / "s.zarr", size=(256, 256), cascade=[tmp_path, tmp_path], diffusers=DiffusersOptions(tmp_path)
    )
    with pytest.raises(SettingsError, match="--cascade or --pipeline, not both"):
        validate(request)
    assert not (tmp_path / "s.zarr").exists()


def test_a_long_cascade_is_refused_before_its_models_load(tmp_path: Path, monkeypatch) -> None:
    """A 1 kB cascade file naming one model 200 times used to load all 200 (3.3 GB) first."""
    import json

    from napari_diffinfinite.engine import cascade as cascade_module

    file = tmp_path / "cascade.json"
    file.write_text(json.dumps({"models": ["m"] * 200}))
    with pytest.raises(SettingsError, match="2 to 4 models.*got 200"):
        cascade_module.read_cascade_file(file)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cascade_module, "load_models", no_loading)
    with pytest.raises(SettingsError, match="got 200"):
        run_generate(GenerateRequest(out=tmp_path / "x.zarr", size=(80, 80), cascade=["m"] * 200,
                                     layout=LayoutSource(label=1), settings=SETTINGS))  # fmt: skip
    assert not (tmp_path / "x.zarr").exists()
