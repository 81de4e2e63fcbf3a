import json

import numpy as np
import pytest
import torch

from napari_diffinfinite import engine
from napari_diffinfinite.errors import CheckpointError, MaskError, SettingsError, StoreError
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide.masks import CanvasMask, ConstantMask
from napari_diffinfinite.slide.pyramid import downsample_image
from napari_diffinfinite.slide.store import SlideStore

SIZE = (700, 1000)  # not multiples of 512


def _generate(tmp_path, model, codec, mask, name="slide.zarr", **kwargs):
    settings = engine.GenerateSettings(steps=2, seed=4, batch_size=8)
    return engine.generate_slide(
        tmp_path / name, SIZE, image_model=model, codec=codec, mask=mask, settings=settings, **kwargs
    )


@pytest.mark.slow
def test_generate_writes_whole_slide_with_labels_and_provenance(
    tmp_path, tiny_image_model, identity_codec, two_class_canvas
):
    mask = CanvasMask(two_class_canvas, SIZE)
    store = _generate(tmp_path, tiny_image_model, identity_codec, mask)
    assert store.shape == SIZE and store.num_levels == 2
    level0 = store.image_level(0)[:]
    assert level0.shape == (3, *SIZE) and level0.std() > 0
    assert np.array_equal(store.image_level(1)[:], downsample_image(level0, 2))
    assert np.array_equal(store.label_level(0)[:], mask.region(0, SIZE[0], 0, SIZE[1]))
    prov = store.provenance
    assert prov["synthetic"] is True and prov["complete"] is True
    assert prov["seed"] == 4 and prov["steps"] == 2 and prov["omega"] == 3.0 and prov["eta"] == 1.0
    assert prov["image_model"]["sha256"] == tiny_image_model.sha256
    assert prov["sampler_stats"]["patches_per_step"] >= prov["sampler_stats"]["ideal_patches_per_step"]
    assert np.array_equal(store.load_canvas(), two_class_canvas)


@pytest.mark.slow
def test_cancel_then_resume_equals_uninterrupted(tmp_path, tiny_image_model, identity_codec, two_class_canvas):
    mask = CanvasMask(two_class_canvas, SIZE)
    reference = _generate(tmp_path, tiny_image_model, identity_codec, mask, "ref.zarr").image_level(0)[:]
    token, seen = CancelToken(), []

    def progress(event):
        seen.append(event.stage)
        if seen.count("sample") == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        _generate(tmp_path, tiny_image_model, identity_codec, mask, "cut.zarr", progress=progress, cancel=token)
    assert SlideStore.open(tmp_path / "cut.zarr").provenance["complete"] is False
    resumed = _generate(tmp_path, tiny_image_model, identity_codec, mask, "cut.zarr", resume=True)
    assert np.array_equal(resumed.image_level(0)[:], reference)


@pytest.mark.slow
def test_cancel_during_decoding_resumes_rows(tmp_path, tiny_image_model, identity_codec):
    mask = ConstantMask(1, SIZE)
    reference = _generate(tmp_path, tiny_image_model, identity_codec, mask, "ref.zarr").image_level(0)[:]
    token = CancelToken()

    def progress(event):
        if event.stage == "decode" and event.done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        _generate(tmp_path, tiny_image_model, identity_codec, mask, "cut.zarr", progress=progress, cancel=token)
    resumed = _generate(tmp_path, tiny_image_model, identity_codec, mask, "cut.zarr", resume=True)
    assert np.array_equal(resumed.image_level(0)[:], reference)


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, tiny_image_model, identity_codec):
    mask = ConstantMask(1, SIZE)
    _generate(tmp_path, tiny_image_model, identity_codec, mask)
    with pytest.raises(StoreError, match="seed: store 4 vs now 5"):
        engine.generate_slide(
            tmp_path / "slide.zarr", SIZE, image_model=tiny_image_model, codec=identity_codec, mask=mask,
            settings=engine.GenerateSettings(steps=2, seed=5), resume=True,
        )  # fmt: skip


@pytest.mark.slow
def test_existing_store_needs_overwrite(tmp_path, tiny_image_model, identity_codec):
    mask = ConstantMask(1, SIZE)
    _generate(tmp_path, tiny_image_model, identity_codec, mask)
    with pytest.raises(StoreError, match="--resume|--overwrite"):
        _generate(tmp_path, tiny_image_model, identity_codec, mask)
    _generate(tmp_path, tiny_image_model, identity_codec, mask, overwrite=True)


def test_mask_with_unknown_class_is_refused(tmp_path, tiny_image_model, identity_codec):
    canvas = np.full((4, 4), 7, np.uint8)
    with pytest.raises(MaskError, match="7"):
        _generate(tmp_path, tiny_image_model, identity_codec, CanvasMask(canvas, SIZE))


def test_mask_size_must_match(tmp_path, tiny_image_model, identity_codec):
    with pytest.raises(MaskError, match="covers"):
        _generate(tmp_path, tiny_image_model, identity_codec, ConstantMask(1, (10, 10)))


def test_slide_smaller_than_a_patch_is_refused(tmp_path, tiny_image_model, identity_codec):
    # a slide thinner than one patch would be padded to a patch: refused, nothing written
    with pytest.raises(SettingsError, match="smaller than one patch"):
        engine.generate_slide(
            tmp_path / "small.zarr", (20, 30), image_model=tiny_image_model, codec=identity_codec,
            mask=ConstantMask(2, (20, 30)), settings=engine.GenerateSettings(steps=1),
        )  # fmt: skip
    assert not (tmp_path / "small.zarr").exists()


def test_a_mask_model_whose_patch_cannot_fit_is_refused_before_sampling(tiny_mask_model, mask_codec, monkeypatch):
    """A config.json with patch_size 8192 (within the caps) made a 256 px layout take 6.5 GB and
    fail with an internal error; now one message, and the batch shrinks where memory is short."""
    import dataclasses

    from napari_diffinfinite.engine import geometry, layout
    from napari_diffinfinite.model.pretrained import DiffusionModel
    from napari_diffinfinite.sampling import mask_sampler

    huge = dataclasses.replace(tiny_mask_model.config, patch_size=8192)
    model = DiffusionModel(config=huge, unet=tiny_mask_model.unet, sha256="", source="huge")

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr(mask_sampler, "sample_layout", no_sampling)
    with pytest.raises(SettingsError, match="8192 px patches need about .* per network evaluation"):
        engine.sample_layout(model, mask_codec, (256, 256), steps=1)
    # memory for 3 evaluations of the tiny model: a batch of 3, not 16
    monkeypatch.setattr(
        geometry,
        "free_memory",
        lambda device: 3.5 * geometry.patch_eval_bytes(tiny_mask_model.config) / geometry.MEMORY_FRACTION,
    )
    seen = {}
    monkeypatch.setattr(mask_sampler, "sample_layout", lambda *a, **k: seen.update(k))
    engine.sample_layout(tiny_mask_model, mask_codec, (256, 256), steps=1)
    assert seen["batch_size"] == 3 and layout.MASK_BATCH == 16


def test_sample_layout_through_engine(tiny_mask_model, mask_codec):
    canvas = engine.sample_layout(tiny_mask_model, mask_codec, (256, 128), steps=2)
    assert canvas.shape == (64, 32)


def test_parse_size():
    assert engine.parse_size("2048x1024") == (1024, 2048)
    assert engine.parse_size("512") == (512, 512)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        engine.parse_size("big")


def test_describe_model(tiny_image_model):
    info = engine.describe_model(tiny_image_model)
    assert info["class_names"] == ["unknown", "class 1", "class 2"] and info["parameters"] > 0
    assert "num_classes=3" in info["architecture"]


def test_a_mask_models_architecture_names_its_conditions_not_classes(tiny_mask_model):
    # "MaskUNet(..., num_classes=2)" next to "4 classes" read as a contradiction in napari
    info = engine.describe_model(tiny_mask_model)
    assert "conditions=" in info["architecture"] and "num_classes" not in info["architecture"]


def test_a_mask_models_summary_says_where_its_layout_is_sampled(tiny_mask_model):
    import dataclasses

    from napari_diffinfinite.model.pretrained import DiffusionModel

    assert engine.describe_model(tiny_mask_model)["layout"] == "sampled at 1/4 of the slide"
    config = dataclasses.replace(
        tiny_mask_model.config, mask_downsample=8, layout_upsample=4, mask_encoding="one-hot", pixel_size_um=2.0
    )
    up = DiffusionModel(config=config, unet=tiny_mask_model.unet, sha256="", source="up")
    assert engine.describe_model(up)["layout"] == "sampled at 1/8 of the slide, upsampled 4x: a canvas at 1/2 (4 um/px)"


# -- the request API ---------------------------------------------------------------------


def _request(tmp_path, model_dir, name="slide.zarr", size=(256, 384), **settings):
    layout = engine.LayoutSource(label=settings.pop("label", 1))
    return engine.GenerateRequest(
        out=tmp_path / name, size=size, image_model=model_dir, layout=layout,
        settings=engine.GenerateSettings(**{"steps": 2, "seed": 3, "device": "cpu", **settings}),
    )  # fmt: skip


def test_run_generate_records_dtype_and_device(tmp_path, tiny_image_model_dir):
    store = engine.run_generate(_request(tmp_path, tiny_image_model_dir))
    prov = store.provenance
    assert prov["complete"] and prov["dtype"] == "float32" and prov["device"] == "cpu" and prov["steps"] == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": -3}, "steps must be at least 1"),
        ({"steps": 100000}, "between 1 and the model's 1000"),
        ({"omega": float("nan")}, "finite"),
        ({"omega": float("inf")}, "finite"),
        ({"eta": 2.0}, "eta must be between 0"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"device": "tpu9"}, "unknown device 'tpu9'"),
        ({"dtype": "int8"}, "unknown dtype"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, tiny_image_model_dir, settings, message):
    with pytest.raises(SettingsError, match=message):
        engine.run_generate(_request(tmp_path, tiny_image_model_dir, **settings))
    assert not (tmp_path / "slide.zarr").exists()


def test_huge_slide_is_refused_with_numbers(tmp_path, tiny_image_model_dir):
    with pytest.raises(SettingsError, match=r"needs .* GB for its latent .* free"):
        engine.run_generate(_request(tmp_path, tiny_image_model_dir, size=(200000, 200000)))
    assert not (tmp_path / "slide.zarr").exists()


def test_slide_cost_estimate():
    config = engine.load_image_model(None).config
    cost = engine.slide_cost((2048, 4096), config, channels=48, scale_factor=4)
    assert cost.latent_shape == (512, 1024) and cost.latent_bytes == 48 * 512 * 1024 * 4
    assert cost.working_bytes == 4 * cost.latent_bytes and cost.store_bytes > 2048 * 4096 * 3


def test_load_image_model_honours_dtype(tiny_image_model_dir):
    model = engine.load_image_model(tiny_image_model_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert engine.load_image_model(tiny_image_model_dir, device="cpu").dtype == torch.float32


def test_resume_without_size_takes_the_stores(tmp_path, tiny_image_model_dir):
    reference = engine.run_generate(_request(tmp_path, tiny_image_model_dir, "ref.zarr")).image_level(0)[:]
    token = CancelToken()

    def progress(event):
        if event.stage == "sample":
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run_generate(_request(tmp_path, tiny_image_model_dir, "cut.zarr"), progress=progress, cancel=token)
    point = engine.resume_slide(tmp_path / "cut.zarr")
    assert point.size == (256, 384) and not point.complete and point.canvas is not None
    point.store.close()
    request = engine.GenerateRequest(out=tmp_path / "cut.zarr", image_model=tiny_image_model_dir, resume=True,
                                     settings=engine.GenerateSettings(device="cpu"))  # fmt: skip
    resumed = engine.run_generate(request)
    assert resumed.shape == (256, 384) and np.array_equal(resumed.image_level(0)[:], reference)


def _cut(tmp_path, model_dir, name="cut.zarr", **settings):
    token = CancelToken()

    def progress(event):
        if event.stage == "sample":
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run_generate(_request(tmp_path, model_dir, name, **settings), progress=progress, cancel=token)
    return tmp_path / name


def test_resume_with_another_mask_is_refused(tmp_path, tiny_image_model_dir):
    out = _cut(tmp_path, tiny_image_model_dir)
    request = _request(tmp_path, tiny_image_model_dir, "cut.zarr", label=2)
    request.resume = True
    with pytest.raises(StoreError, match="another layout"):
        engine.run_generate(request)
    same = _request(tmp_path, tiny_image_model_dir, "cut.zarr", label=1)
    same.resume = True
    assert engine.run_generate(same).provenance["complete"] and out.exists()


def _sampled(tmp_path, image_dir, mask_dir, **layout):
    return engine.GenerateRequest(
        out=tmp_path / "sampled.zarr", size=(256, 256), image_model=image_dir,
        layout=engine.LayoutSource(mask_model=mask_dir, **layout),
        settings=engine.GenerateSettings(steps=2, seed=3, device="cpu"),
    )  # fmt: skip


def test_a_sampled_layout_resumes_with_its_mask_model_and_refuses_other_options(
    tmp_path, tiny_image_model_dir, tiny_mask_model_dir
):
    """The interrupt message says "run the same command with --resume": with --mask-model that
    failed ("no mask model was loaded"), and other --mask-seed/--mask-condition were ignored."""
    token = CancelToken()

    def progress(event):
        if event.stage == "sample":
            token.cancel()

    request = _sampled(tmp_path, tiny_image_model_dir, tiny_mask_model_dir, seed=5, condition="Tissue")
    with pytest.raises(Cancelled):
        engine.run_generate(request, progress=progress, cancel=token)
    saved = engine.resume_slide(tmp_path / "sampled.zarr")
    saved.store.close()
    mask = saved.provenance["mask"]
    assert (mask["condition"], mask["condition_name"], mask["seed"], mask["steps"]) == (1, "tissue", 5, 4)
    for options, message in [
        ({"seed": 6}, r"--mask-seed 6 \(the store's: 5\)"),
        ({"condition": 0}, r"--mask-condition 0 \(the store's: 1\)"),
        ({"condition": "any"}, r"--mask-condition any \(the store's: tissue\)"),
        ({"steps": 3}, r"--mask-steps 3 \(the store's: 4\)"),
    ]:
        again = _sampled(tmp_path, tiny_image_model_dir, tiny_mask_model_dir, **options)
        again.resume = True
        with pytest.raises(SettingsError, match=message):
            engine.run_generate(again)
    other = tmp_path / "other-mask"
    from napari_diffinfinite.testing import write_tiny_model

    write_tiny_model(other, kind="mask", seed=1)
    again = _sampled(tmp_path, tiny_image_model_dir, other)
    again.resume = True
    with pytest.raises(SettingsError, match="--mask-model: another model"):
        engine.run_generate(again)
    same = _sampled(tmp_path, tiny_image_model_dir, tiny_mask_model_dir, seed=5, condition=1)
    same.resume = True
    assert engine.run_generate(same).provenance["complete"]


def test_mask_sampling_options_without_a_sampled_layout_are_refused(tmp_path, tiny_image_model_dir):
    request = _request(tmp_path, tiny_image_model_dir)
    request.layout.seed = 3
    with pytest.raises(SettingsError, match="--mask-seed apply to a layout sampled by a mask model, not to --label"):
        engine.run_generate(request)
    assert not (tmp_path / "slide.zarr").exists()


def test_sample_layout_checks_its_arguments(tiny_mask_model, mask_codec):
    with pytest.raises(SettingsError, match="finite"):
        engine.sample_layout(tiny_mask_model, mask_codec, (64, 64), omega=float("nan"))
    with pytest.raises(SettingsError, match="at least 1 x 1 px"):
        engine.sample_layout(tiny_mask_model, mask_codec, (0, 256))
    with pytest.raises(SettingsError, match="no condition named 'stroma'; its conditions: 0=any, 1=tissue"):
        engine.sample_layout(tiny_mask_model, mask_codec, (64, 64), condition="stroma")
    by_name = engine.sample_layout(tiny_mask_model, mask_codec, (64, 64), condition="any", steps=1)
    assert np.array_equal(by_name, engine.sample_layout(tiny_mask_model, mask_codec, (64, 64), condition=0, steps=1))


def test_resume_with_another_dtype_is_refused_unless_allowed(tmp_path, tiny_image_model_dir):
    _cut(tmp_path, tiny_image_model_dir)
    request = _request(tmp_path, tiny_image_model_dir, "cut.zarr", dtype="bfloat16")
    request.resume = True
    with pytest.raises(StoreError, match="sampled in float32.*--allow-dtype-change"):
        engine.run_generate(request)
    request.allow_dtype_change = True
    assert engine.run_generate(request).provenance["complete"]


def test_geojson_without_features_or_outside_the_slide_is_refused(tmp_path, tiny_image_model_dir):
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    outside = tmp_path / "outside.geojson"
    square = [[[5000, 5000], [5100, 5000], [5100, 5100], [5000, 5100], [5000, 5000]]]
    outside.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
        "properties": {"objectType": "annotation", "classification": {"name": "class 1"}}}]}))  # fmt: skip
    for path, message in ((empty, "no area annotation"), (outside, "outside the 384x256 px slide")):
        request = _request(tmp_path, tiny_image_model_dir)
        request.layout = engine.LayoutSource(mask=path)
        with pytest.raises(MaskError, match=message):
            engine.run_generate(request)
        assert not (tmp_path / "slide.zarr").exists()


def test_decoding_saves_the_state_at_most_once_per_interval(tmp_path, tiny_image_model_dir, monkeypatch):
    saved = []
    original = SlideStore.save_state

    def counting(self, arrays, meta):
        saved.append((dict(meta), sorted(arrays)))
        return original(self, arrays, meta)

    monkeypatch.setattr(SlideStore, "save_state", counting)
    request = _request(tmp_path, tiny_image_model_dir, size=(1536, 256))  # 3 tile rows
    request.settings.checkpoint_every_s = 3600
    engine.run_generate(request)
    decode_saves = [m for m, _ in saved if m["decoded_rows"] > 0]
    assert decode_saves == []  # 3 rows decoded, no interval elapsed: no full-latent rewrite per row
    assert [a for m, a in saved if m["step"] == 0] == [[], []]  # the keyed initial noise is never written


def test_tiles_are_decoded_with_the_whole_latent_decoder(tmp_path, tiny_image_model, identity_codec, monkeypatch):
    """The engine decodes through ``codec.tile_decoder(latent)`` (whole-latent GroupNorm statistics and
    attention context for VAE codecs), not the plain per-window ``decode``."""
    seen = []
    plain = identity_codec.tile_decoder

    def recording(latent):
        seen.append(tuple(latent.shape))
        return plain(latent)

    monkeypatch.setattr(identity_codec, "tile_decoder", recording)
    engine.generate_slide(
        tmp_path / "s.zarr", (256, 256), image_model=tiny_image_model, codec=identity_codec,
        mask=ConstantMask(1, (256, 256)), settings=engine.GenerateSettings(steps=1),
    )  # fmt: skip
    assert len(seen) == 1 and seen[0][-2:] == engine.latent_shape(
        (256, 256), tiny_image_model.config, identity_codec.scale_factor
    )


def test_compile_setting_reaches_the_sampler(tmp_path, tiny_image_model, identity_codec, monkeypatch):
    import napari_diffinfinite.engine.job as job

    seen = {}
    real = job.RandomPatchSampler

    def recording(*args, **kwargs):
        seen.update(kwargs)
        kwargs["compile"] = False  # compiling takes minutes on a CPU; only the plumbing is tested here
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "RandomPatchSampler", recording)
    engine.generate_slide(
        tmp_path / "s.zarr", (256, 256), image_model=tiny_image_model, codec=identity_codec,
        mask=ConstantMask(1, (256, 256)), settings=engine.GenerateSettings(steps=1, compile=True),
    )  # fmt: skip
    assert seen["compile"] is True


def test_guidance_defaults_to_the_models_own_then_to_3(tiny_image_model):
    """A model config's ``default_omega`` (the demo model's, tuned on held-out layouts) is the
    job's guidance unless the request gives one; without it the engine's 3."""
    from dataclasses import replace

    from napari_diffinfinite.engine.request import resolve_omega
    from napari_diffinfinite.model.config import ModelConfig

    config = tiny_image_model.config
    assert config.default_omega is None and resolve_omega(None, config) == 3.0
    tuned = replace(config, default_omega=2.0)
    assert resolve_omega(None, tuned) == 2.0 and resolve_omega(0.5, tuned) == 0.5
    assert ModelConfig.from_dict(tuned.to_dict()).default_omega == 2.0
    with pytest.raises(CheckpointError, match="default_omega must be a number between 0 and 50"):
        replace(config, default_omega=-1.0)


def test_the_embedded_demo_model_samples_with_its_tuned_guidance():
    from napari_diffinfinite.demo import DEMO_IMAGE_OMEGA, demo_model_dir
    from napari_diffinfinite.model.config import ModelConfig

    assert ModelConfig.load(demo_model_dir("image") / "config.json").default_omega == DEMO_IMAGE_OMEGA
