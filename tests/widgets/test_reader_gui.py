"""Opening a slide store in napari adds the RGB pyramid, the labels and the provenance."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def test_open_store_with_napari(viewer, small_store):
    layers = viewer.open(str(small_store), plugin="napari-diffinfinite")
    image, labels = layers
    assert image.multiscale and image.rgb
    assert [tuple(level.shape) for level in image.data] == [(1024, 1024, 3), (512, 512, 3)]
    assert isinstance(labels, napari.layers.Labels) and labels.multiscale
    assert image.metadata["provenance"]["seed"] == 3
    assert image.metadata["provenance"]["synthetic"] is True
    assert int(np.asarray(labels.data[0][0, 1000])) == 2
    from napari_diffinfinite.slide.store import SlideStore

    level1 = SlideStore.open(small_store).image_level(1)
    np.testing.assert_array_equal(
        np.asarray(image.data[1][10:20, 300:310]), np.moveaxis(level1[:, 10:20, 300:310], 0, -1)
    )


def test_open_store_written_by_the_cli(viewer, tmp_path, tiny_image_model_dir):
    from napari_diffinfinite.cli import main

    out = tmp_path / "cli.zarr"
    argv = ["generate", "--out", str(out), "--size", "1024x512", "--model", str(tiny_image_model_dir),
            "--label", "1", "--steps", "1", "--batch-size", "1024", "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    image, labels = viewer.open(str(out), plugin="napari-diffinfinite")
    assert [tuple(level.shape) for level in image.data] == [(512, 1024, 3), (256, 512, 3)]
    assert image.metadata["provenance"]["complete"] is True
    assert image.metadata["provenance"]["steps"] == 1
    assert (np.asarray(labels.data[0][:, :]) == 1).all()
    assert labels.colormap.color_dict[1][3] == 1


def test_drag_and_drop_with_the_remembered_reader(make_napari_viewer, small_store, monkeypatch):
    """napari asks which reader to use for a .zarr folder (its builtin reader also claims
    *.zarr but cannot read a slide store); with DiffInfinite preferred for "*.zarr/"
    (Preferences > Plugins), dropping the folder opens it with ours, no question asked."""
    import napari._qt.qt_viewer as qt_viewer_module
    from napari.settings import get_settings

    def no_dialog(*args, **kwargs):  # the reader dialog would block the test
        raise AssertionError("napari asked which reader to use")

    monkeypatch.setattr(qt_viewer_module, "handle_gui_reading", no_dialog)
    viewer = make_napari_viewer()
    plugins = get_settings().plugins
    monkeypatch.setattr(plugins, "extension2reader", {**plugins.extension2reader, "*.zarr/": "napari-diffinfinite"})
    viewer.window._qt_viewer._qt_open([str(small_store)], stack=False)
    assert [layer.name for layer in viewer.layers] == ["small", "small labels"]
