"""Tissue-layout masks: a real H&E slide, synthetic images, canvases for generation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.errors import MaskError
from napari_diffinfinite.slide.tissue import (
    optical_density,
    tissue_layout_source,
    tissue_mask,
    tissue_mask_from_rgb,
)


def pink_disk(shape=(300, 400), radius=90, noise=3.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    disk = np.hypot(yy - h / 2, xx - w / 2) < radius
    rgb = np.full((h, w, 3), 242.0) + rng.normal(0, noise, (h, w, 3))
    rgb[disk] = np.array([215.0, 120.0, 175.0]) + rng.normal(0, 12, (int(disk.sum()), 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), disk


def test_optical_density_of_white_and_dark():
    od = optical_density(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8))
    assert od[0, 0] == pytest.approx(0.0) and od[0, 1] == pytest.approx(np.log10(256))


def test_finds_a_disk_of_tissue_on_glass():
    rgb, disk = pink_disk()
    mask, threshold = tissue_mask_from_rgb(rgb)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.95 and 0.03 <= threshold < 0.2


def test_blank_glass_has_no_tissue():
    rgb = np.clip(np.random.default_rng(2).normal(243, 3, (200, 200, 3)), 0, 255).astype(np.uint8)
    mask, _ = tissue_mask_from_rgb(rgb)
    assert not mask.any()


def test_rejects_non_rgb():
    with pytest.raises(MaskError, match="uint8"):
        tissue_mask_from_rgb(np.zeros((5, 5), np.uint8))


def test_real_slide_tissue_is_separated_from_background(cmu_svs):
    from napari_diffinfinite.slide.openslide_reader import open_real_slide

    result = tissue_mask(cmu_svs, max_side=512)
    assert result.mask.shape == (512, 383) and result.slide_shape == (2967, 2220)
    assert 0.2 < result.tissue_fraction < 0.7
    with open_real_slide(cmu_svs) as slide:
        from PIL import Image

        small = np.asarray(Image.fromarray(slide.read_region(0, 0, 2967, 0, 2220)).resize((383, 512)))
    brightness = small.mean(axis=-1)
    # Glass is bright and uniform; tissue absorbs light.
    assert brightness[~result.mask].mean() > 225
    assert brightness[result.mask].mean() < brightness[~result.mask].mean() - 40
    assert optical_density(small)[result.mask].mean() > 3 * optical_density(small)[~result.mask].mean()
    assert not result.mask[250:350, 10:100].any()  # glass left of the tissue


def test_layout_source_for_a_synthetic_twin(cmu_svs):
    source = tissue_layout_source(cmu_svs, tissue_label=2, background_label=1, slide_shape=(4096, 3072), max_side=256)
    assert source.shape == (4096, 3072)
    assert set(np.unique(source.canvas)) == {1, 2}
    assert source.region(2048, 2600, 100, 700).max() == 1  # glass -> background class
    assert source.region(3600, 4000, 1200, 1600).min() == 2  # the tissue's base
    with pytest.raises(MaskError, match="between 0 and 255"):
        tissue_mask(cmu_svs, max_side=64).to_canvas(300)


class _OneLevelSlide:
    """A slide of one level only (no pyramid) that records how much each read asks for."""

    def __init__(self, image):
        self.image = image
        self.shape = image.shape[:2]
        self.level_shapes = [self.shape]
        self.largest_read = 0

    def read_region(self, level, y0, y1, x0, x1):
        self.largest_read = max(self.largest_read, (y1 - y0) * (x1 - x0))
        return self.image[y0:y1, x0:x1].copy()


def test_a_slide_without_a_small_level_is_shrunk_in_strips(monkeypatch):
    """A 151-byte TIFF claiming 20000 x 20000 px (one level) made tissue detection read the whole
    level at once (1.9 GB); now it is read in bounded strips and gives the same thumbnail."""
    from napari_diffinfinite.slide import tissue

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    monkeypatch.setattr(tissue, "STRIP_PIXELS", 100_000)
    slide = _OneLevelSlide(image)
    small = tissue._low_resolution_rgb(slide, 200)
    assert small.shape == (150, 200, 3)
    assert slide.largest_read <= 100_000 + 1600 * 8
    reference = image.reshape(150, 8, 200, 8, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - reference).max() <= 1.0
    monkeypatch.setattr(tissue, "MAX_LEVEL_PIXELS", 1_000_000)
    with pytest.raises(MaskError, match="no pyramid level near 200 px"):
        tissue._low_resolution_rgb(_OneLevelSlide(image), 200)
