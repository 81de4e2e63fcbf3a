"""Pyramid geometry and downsampling against straightforward references."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.errors import StoreError
from napari_diffinfinite.slide.pyramid import (
    MAX_LEVEL,
    downsample_image,
    downsample_labels,
    image_levels,
    level_shapes,
)


def reference_downsample(image: np.ndarray, f: int) -> np.ndarray:
    """Block mean by explicit loops, rounding half up."""
    c, h, w = image.shape
    out = np.zeros((c, -(-h // f), -(-w // f)), dtype=np.uint8)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            block = image[:, i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.int64)
            n = block.shape[1] * block.shape[2]
            out[:, i, j] = (block.sum(axis=(1, 2)) + n // 2) // n
    return out


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((512, 512), [(512, 512)]),
        ((1, 1), [(1, 1)]),
        ((513, 513), [(513, 513), (257, 257)]),
        ((2048, 1000), [(2048, 1000), (1024, 500), (512, 250)]),
        ((1300, 100), [(1300, 100), (650, 50), (325, 25)]),
    ],
)
def test_level_shapes(shape, expected):
    assert level_shapes(shape) == expected


def test_level_shapes_largest_supported_slide_has_max_levels():
    side = 512 * 2**MAX_LEVEL
    shapes = level_shapes((side, 10))
    assert len(shapes) == MAX_LEVEL + 1
    assert shapes[-1] == (512, 1)


def test_level_shapes_too_large_raises():
    with pytest.raises(StoreError, match="too large"):
        level_shapes((512 * 2**MAX_LEVEL + 1, 10))


def test_level_shapes_rejects_empty_slide():
    with pytest.raises(StoreError):
        level_shapes((0, 10))


@pytest.mark.parametrize("shape", [(3, 13, 7), (3, 16, 16), (3, 1, 9), (3, 33, 31)])
@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8, 16])
def test_downsample_image_matches_reference(shape, factor):
    image = np.random.default_rng(factor).integers(0, 256, shape, dtype=np.uint8)
    result = downsample_image(image, factor)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, reference_downsample(image, factor))


def test_downsample_image_rounds_half_up():
    image = np.zeros((3, 2, 2), dtype=np.uint8)
    image[0] = [[1, 1], [0, 0]]  # mean 0.5 -> 1
    image[1] = [[1, 0], [0, 0]]  # mean 0.25 -> 0
    image[2] = [[3, 3], [3, 0]]  # mean 2.25 -> 2
    assert downsample_image(image, 2)[:, 0, 0].tolist() == [1, 0, 2]


def test_downsample_image_partial_edge_block_averages_its_own_pixels():
    image = np.zeros((3, 3, 3), dtype=np.uint8)
    image[:, 2, :] = 200  # the bottom edge block holds only this row
    result = downsample_image(image, 2)
    assert result[0].tolist() == [[0, 0], [200, 200]]


def test_downsample_image_no_overflow_on_whole_tile():
    tile = np.full((3, 512, 512), 255, dtype=np.uint8)
    np.testing.assert_array_equal(downsample_image(tile, 512), np.full((3, 1, 1), 255))


def test_image_levels_equal_direct_downsample():
    tile = np.random.default_rng(1).integers(0, 256, (3, 300, 173), dtype=np.uint8)
    levels = list(image_levels(tile, 7))
    assert len(levels) == 7
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, downsample_image(tile, 2**k))


def test_downsample_labels_takes_top_left_pixel():
    labels = np.arange(35, dtype=np.uint8).reshape(5, 7)
    np.testing.assert_array_equal(downsample_labels(labels, 2), labels[[0, 2, 4]][:, [0, 2, 4, 6]])
    np.testing.assert_array_equal(downsample_labels(labels, 1), labels)
