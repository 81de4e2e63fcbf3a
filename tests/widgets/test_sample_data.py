"""File > Open Sample: the shipped sample slide opens at once, in micrometres."""

from __future__ import annotations

import numpy as np

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
