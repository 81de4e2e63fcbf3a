"""Mask sources: nearest-neighbour sampling, clamping, file loading and label validation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_diffinfinite.errors import MaskError
from napari_diffinfinite.slide.masks import (
    CanvasMask,
    ConstantMask,
    MaskSource,
    latent_labels,
    load_label_image,
    mask_from_file,
    validate_labels,
)


def reference_labels(canvas: np.ndarray, shape: tuple[int, int], ys, xs) -> np.ndarray:
    """Label of each slide pixel by the documented formula, with explicit loops and clamping."""
    (ch, cw), (h, w) = canvas.shape, shape
    out = np.zeros((len(ys), len(xs)), dtype=np.uint8)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            yc, xc = min(max(y, 0), h - 1), min(max(x, 0), w - 1)
            out[i, j] = canvas[(yc * ch) // h, (xc * cw) // w]
    return out


def test_canvas_mask_integer_ratio_equals_repeat():
    canvas = np.arange(12, dtype=np.uint8).reshape(3, 4)
    mask = CanvasMask(canvas, (6, 12))
    expected = np.repeat(np.repeat(canvas, 2, axis=0), 3, axis=1)
    np.testing.assert_array_equal(mask.region(0, 6, 0, 12), expected)


@pytest.mark.parametrize(("y0", "y1", "x0", "x1", "step"), [(0, 23, 0, 17, 1), (3, 20, 2, 15, 3), (5, 6, 16, 17, 1)])
def test_canvas_mask_non_integer_ratio_matches_reference(y0, y1, x0, x1, step):
    canvas = np.random.default_rng(0).integers(0, 9, (7, 5), dtype=np.uint8)
    mask = CanvasMask(canvas, (23, 17))
    expected = reference_labels(canvas, (23, 17), range(y0, y1, step), range(x0, x1, step))
    result = mask.region(y0, y1, x0, x1, step=step)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_canvas_larger_than_slide_is_subsampled():
    canvas = np.random.default_rng(1).integers(0, 9, (40, 30), dtype=np.uint8)
    mask = CanvasMask(canvas, (13, 11))
    np.testing.assert_array_equal(mask.region(0, 13, 0, 11), reference_labels(canvas, (13, 11), range(13), range(11)))


def test_coordinates_beyond_the_edge_are_clamped():
    canvas = np.arange(6, dtype=np.uint8).reshape(2, 3)
    mask = CanvasMask(canvas, (4, 6))
    result = mask.region(-3, 7, 4, 10)
    np.testing.assert_array_equal(result, reference_labels(canvas, (4, 6), range(-3, 7), range(4, 10)))
    assert result[0, -1] == canvas[0, -1] and result[-1, -1] == canvas[-1, -1]


def test_constant_mask():
    mask = ConstantMask(3, (100, 50))
    assert mask.canvas.shape == (1, 1) and mask.canvas[0, 0] == 3
    region = mask.region(-10, 20, 40, 60, step=4)
    assert region.shape == (len(range(-10, 20, 4)), len(range(40, 60, 4)))
    assert region.dtype == np.uint8 and (region == 3).all()
    assert mask.region(5, 5, 0, 10).shape == (0, 10)


def test_both_masks_are_mask_sources():
    assert isinstance(ConstantMask(1, (2, 2)), MaskSource)
    assert isinstance(CanvasMask(np.zeros((2, 2), np.uint8), (2, 2)), MaskSource)


@pytest.mark.parametrize(
    "mask",
    [
        ConstantMask(2, (10**6, 10**6)),
        CanvasMask(np.random.default_rng(2).integers(0, 5, (1000, 1000), dtype=np.uint8), (10**6, 10**6)),
    ],
    ids=["constant", "canvas"],
)
def test_region_of_a_huge_slide_costs_only_the_region(mask):
    tracemalloc.start()
    try:
        region = mask.region(999_000, 999_512, 123_456, 123_968)
        coarse = mask.region(0, 10**6, 0, 10**6, step=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert region.shape == (512, 512) and coarse.shape == (245, 245)
    assert peak < 8 * 2**20  # a few region-sized buffers, nothing slide-sized (10^12 px)
    if isinstance(mask, CanvasMask):
        index = (np.arange(245) * 4096 * 1000) // 10**6
        np.testing.assert_array_equal(coarse, mask.canvas[index][:, index])


def test_latent_labels_take_every_scale_factor_th_pixel():
    canvas = np.random.default_rng(3).integers(0, 4, (9, 7), dtype=np.uint8)
    mask = CanvasMask(canvas, (64, 48))
    full = mask.region(0, 64, 0, 48)
    np.testing.assert_array_equal(latent_labels(mask, (8, 6), 8), full[::8, ::8])
    # A latent padded past the slide edge repeats the edge labels.
    padded = latent_labels(mask, (10, 7), 8)
    np.testing.assert_array_equal(padded[:8, :6], full[::8, ::8])
    np.testing.assert_array_equal(padded[8:, :6], np.repeat(full[-1:, ::8], 2, axis=0))


def test_invalid_canvases_and_labels_are_refused():
    with pytest.raises(MaskError, match="integers"):
        CanvasMask(np.zeros((2, 2), np.float32), (4, 4))
    with pytest.raises(MaskError, match="2-D"):
        CanvasMask(np.zeros((2, 2, 3), np.uint8), (4, 4))
    with pytest.raises(MaskError, match="0..255"):
        ConstantMask(300, (4, 4))


# -- files ---------------------------------------------------------------------------------

LABELS = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)


def test_load_greyscale_png(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(LABELS, mode="L").save(path)
    result = load_label_image(path)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, LABELS)


def test_load_palette_png_uses_indices(tmp_path):
    path = tmp_path / "mask.png"
    image = Image.fromarray(LABELS, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.save(path)
    np.testing.assert_array_equal(load_label_image(path), LABELS)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_load_grey_rgb_png_takes_one_channel(tmp_path, mode):
    path = tmp_path / "mask.png"
    stacked = np.stack([LABELS] * len(mode), axis=-1)
    if mode == "RGBA":
        stacked[..., 3] = 255
    Image.fromarray(stacked, mode=mode).save(path)
    np.testing.assert_array_equal(load_label_image(path), LABELS)


def test_load_colour_png_is_refused(tmp_path):
    path = tmp_path / "colour.png"
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb, mode="RGB").save(path)
    with pytest.raises(MaskError, match="one integer class per pixel") as info:
        load_label_image(path)
    assert "colour.png" in str(info.value) and "0 = unknown" in str(info.value)


def test_load_16bit_png(tmp_path):
    ok, bad = tmp_path / "ok.png", tmp_path / "bad.png"
    Image.fromarray(LABELS.astype(np.uint16)).save(ok)
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(bad)
    np.testing.assert_array_equal(load_label_image(ok), LABELS)
    with pytest.raises(MaskError, match=r"0\.\.255") as info:
        load_label_image(bad)
    assert "bad.png" in str(info.value)


def test_load_tiff(tmp_path):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, LABELS)
    np.testing.assert_array_equal(load_label_image(path), LABELS)


def test_load_grey_rgb_tiff(tmp_path):
    path = tmp_path / "mask.tiff"
    tifffile.imwrite(path, np.stack([LABELS] * 3, axis=-1), photometric="rgb")
    np.testing.assert_array_equal(load_label_image(path), LABELS)


def test_load_float_tiff_is_refused(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, LABELS.astype(np.float32))
    with pytest.raises(MaskError, match="float32") as info:
        load_label_image(path)
    assert "float.tif" in str(info.value)


def test_load_uint16_tiff_above_255_is_refused(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.array([[0, 1000]], dtype=np.uint16))
    with pytest.raises(MaskError, match="1000"):
        load_label_image(path)


def test_load_multi_page_tiff_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((2, 4, 5), dtype=np.uint8))
    with pytest.raises(MaskError, match="single 2-D plane"):
        load_label_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(MaskError, match="does not exist") as info:
        load_label_image(tmp_path / "nowhere.png")
    assert "nowhere.png" in str(info.value)


@pytest.mark.parametrize("name", ["broken.png", "broken.tif"])
def test_unreadable_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image")
    with pytest.raises(MaskError, match="cannot read") as info:
        load_label_image(path)
    assert name in str(info.value)


def test_mask_from_file(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(LABELS, mode="L").save(path)
    mask = mask_from_file(path, (20, 30))
    assert isinstance(mask, CanvasMask) and mask.shape == (20, 30)
    np.testing.assert_array_equal(mask.region(0, 20, 0, 30, step=10), LABELS)


# -- validation ----------------------------------------------------------------------------


def test_validate_labels_accepts_known_classes():
    validate_labels(LABELS, 4)
    validate_labels(np.zeros((0, 0), np.uint8), 1)


def test_validate_labels_names_offending_values_and_classes():
    canvas = np.array([[0, 1, 7], [9, 9, 2]], dtype=np.uint8)
    with pytest.raises(MaskError) as info:
        validate_labels(canvas, 3, ["unknown", "tumor", "stroma"])
    message = str(info.value)
    assert "7 (1 px)" in message and "9 (2 px)" in message
    assert "1 = tumor" in message and "2 = stroma" in message
    with pytest.raises(MaskError, match=r"0 \(unknown\) to 2"):
        validate_labels(canvas, 3)
