"""File > Open Sample: the shipped sample slide opens at once, in micrometres."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_diffinfinite import _sample_data


def test_ring_layout_uses_every_class():
    layout = _sample_data.ring_layout(4, 64)
    assert layout.shape == (64, 64) and layout.dtype == np.uint8
    assert set(np.unique(layout)) == {1, 2, 3}
    assert set(np.unique(_sample_data.ring_layout(2))) == {1}


def test_shipped_sample_is_small_and_made_by_the_demo_models(tmp_path, monkeypatch):
    from napari_diffinfinite.slide.store import SlideStore

    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path / "cache"))
    assert _sample_data.SAMPLE_ARCHIVE.stat().st_size < 400_000
    path = _sample_data.unpack_sample()
    store = SlideStore.open(path, mode="r")
    assert store.shape == (_sample_data.SAMPLE_SIZE, _sample_data.SAMPLE_SIZE)
    record = store.provenance
    assert record["complete"] is True and record["synthetic"] is True
    assert "demo" in record["image_model"]["source"]
    assert record["pixel_size_um"] and store.class_names[0] == "unknown"
    labels = np.asarray(store.label_level(0)[:])
    assert len(np.unique(labels)) >= 2  # a sampled layout, not one class
    assert _sample_data.unpack_sample() == path  # unpacked once


@pytest.mark.gui
def test_open_sample_is_instant(make_napari_viewer, tmp_path, monkeypatch):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
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
