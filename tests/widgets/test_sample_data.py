"""File > Open Sample: the sample command generates a small slide (cached) and opens it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite import _sample_data

pytestmark = pytest.mark.gui


def test_ring_layout_uses_every_class():
    layout = _sample_data.ring_layout(4, 64)
    assert layout.shape == (64, 64) and layout.dtype == np.uint8
    assert set(np.unique(layout)) == {1, 2, 3}
    assert set(np.unique(_sample_data.ring_layout(2))) == {1}


def test_open_sample_generates_once(make_napari_viewer, tmp_path, monkeypatch, tiny_image_model_dir):
    """The sample, with the tiny model standing in for the demo model (for speed)."""
    from napari_diffinfinite import engine

    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_sample_data, "SAMPLE_SIZE", 256)
    monkeypatch.setattr(_sample_data, "SAMPLE_STEPS", 1)
    load = engine.load_image_model
    monkeypatch.setattr(engine, "load_image_model", lambda path=None, **kw: load(tiny_image_model_dir, **kw))
    calls = []
    generate = engine.generate_slide
    monkeypatch.setattr(engine, "generate_slide", lambda *a, **kw: calls.append(a) or generate(*a, **kw))

    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-diffinfinite", "synthetic_slide")
    image = layers[0]
    assert image.name == "DiffInfinite sample" and image.rgb
    assert tuple(image.data.shape if not image.multiscale else image.data[0].shape) == (256, 256, 3)
    assert image.metadata["provenance"]["complete"] is True
    assert len(calls) == 1
    viewer.open_sample("napari-diffinfinite", "synthetic_slide")  # cached: no new generation
    assert len(calls) == 1
