import numpy as np
import pytest

from napari_diffinfinite import engine
from napari_diffinfinite.errors import MaskError, StoreError
from napari_diffinfinite.progress import CancelToken, Cancelled
from napari_diffinfinite.slide.masks import CanvasMask, ConstantMask
from napari_diffinfinite.slide.pyramid import downsample_image
from napari_diffinfinite.slide.store import SlideStore

SIZE = (700, 1000)  # not multiples of 512


def _generate(tmp_path, model, codec, mask, name="slide.zarr", **kwargs):
    settings = engine.GenerateSettings(steps=2, seed=4, batch_size=8)
    return engine.generate_slide(tmp_path / name, SIZE, image_model=model, codec=codec, mask=mask, settings=settings, **kwargs)


def test_generate_writes_whole_slide_with_labels_and_provenance(tmp_path, tiny_image_model, identity_codec, two_class_canvas):
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


def test_resume_with_other_settings_is_refused(tmp_path, tiny_image_model, identity_codec):
    mask = ConstantMask(1, SIZE)
    _generate(tmp_path, tiny_image_model, identity_codec, mask)
    with pytest.raises(StoreError, match="seed: store 4 vs now 5"):
        engine.generate_slide(
            tmp_path / "slide.zarr", SIZE, image_model=tiny_image_model, codec=identity_codec, mask=mask,
            settings=engine.GenerateSettings(steps=2, seed=5), resume=True,
        )  # fmt: skip


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


def test_slide_smaller_than_a_patch(tmp_path, tiny_image_model, identity_codec):
    store = engine.generate_slide(
        tmp_path / "small.zarr", (20, 30), image_model=tiny_image_model, codec=identity_codec,
        mask=ConstantMask(2, (20, 30)), settings=engine.GenerateSettings(steps=1),
    )  # fmt: skip
    assert store.image_level(0).shape == (3, 20, 30)


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
