"""File > Open Sample in a napari window: the shipped sample slide opens at once, in µm."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite import _sample_data  # noqa: E402

pytestmark = pytest.mark.gui


def test_open_sample_is_instant(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    # napari's own first-use costs (layer classes, colormaps) are not the sample's: pay them first
    viewer.layers.remove(viewer.add_labels(np.zeros((8, 8), np.uint8)))
    viewer.layers.remove(viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True))
    started = time.perf_counter()
    layers = viewer.open_sample("napari-diffinfinite", "synthetic_slide")
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"File > Open Sample took {elapsed:.1f} s"
    image, labels = layers
    assert image.name == _sample_data.SAMPLE_NAME and image.rgb
    assert image.metadata["provenance"]["complete"] is True
    px = image.metadata["pixel_size_um"]
    np.testing.assert_allclose(image.scale, (px, px))
    np.testing.assert_allclose(labels.scale, (px, px))
    assert str(image.units[0]) in ("micrometer", "um", "µm")
