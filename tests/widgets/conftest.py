"""Fixtures for the widget tests.

GUI tests (``@pytest.mark.gui``; run them under a display: ``xvfb-run -a pytest -m gui``)
skip themselves when napari or pytest-qt is missing (``pytest.importorskip`` at the top
of their module); the pure tests here (geometry, throttling, messages, estimates, sample
archive) run without napari.
"""

from __future__ import annotations

import numpy as np
import pytest

NAMES = ["unknown", "tumour", "stroma"]
COLORS = [(0, 0, 0), (230, 25, 75), (60, 180, 75)]


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Remembered paths go to a throw-away INI file, never the user's settings."""
    monkeypatch.setenv("NAPARI_DIFFINFINITE_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture
def notifications(monkeypatch):
    """Messages the widgets show as napari notifications, as (level, text)."""
    shown: list[tuple[str, str]] = []
    from napari_diffinfinite.widgets import _threading

    monkeypatch.setattr(_threading, "show_error", lambda msg: shown.append(("error", msg)))
    monkeypatch.setattr(_threading, "show_info", lambda msg: shown.append(("info", msg)))
    return shown


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def small_store(tmp_path):
    """A complete 1024 x 1024 slide store with a gradient image and two label classes."""
    from napari_diffinfinite.slide.masks import CanvasMask
    from napari_diffinfinite.slide.store import SlideStore

    path = tmp_path / "small.zarr"
    store = SlideStore.create(path, (1024, 1024), class_names=NAMES, class_colors=COLORS, provenance={"seed": 3})
    yy, xx = np.mgrid[0:512, 0:512]
    for y0 in (0, 512):
        for x0 in (0, 512):
            tile = np.stack([(yy + y0) % 256, (xx + x0) % 256, np.full_like(yy, y0 // 4 + x0 // 8)])
            store.write_tile(y0, x0, tile.astype(np.uint8))
    canvas = np.ones((8, 8), np.uint8)
    canvas[:, 4:] = 2
    store.write_labels(CanvasMask(canvas, (1024, 1024)))
    store.mark_complete()
    return path


@pytest.fixture
def image_model_dir(tiny_image_model_dir):
    """The tiny random-init image model folder (tests/conftest.py)."""
    return tiny_image_model_dir


@pytest.fixture
def mask_model_dir(tiny_mask_model_dir):
    """The tiny random-init mask model folder (tests/conftest.py)."""
    return tiny_mask_model_dir
