"""Export widget: a rectangle drawn in a Shapes layer exports as OME-Zarr that reads back equal."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite.widgets._export import REGION_LAYER, ExportWidget  # noqa: E402

pytestmark = pytest.mark.gui


def test_export_rectangle_as_ome_zarr_reads_back_equal(viewer, qtbot, small_store, tmp_path):
    from napari_diffinfinite.slide.store import SlideStore

    viewer.open(str(small_store), plugin="napari-diffinfinite")
    widget = ExportWidget(viewer)
    assert widget.source.count() == 1 and widget.source_path() == small_store
    shapes = widget.draw_rectangle()
    assert shapes.name == REGION_LAYER and shapes.mode == "add_rectangle"
    shapes.add_rectangles(np.array([[100, 300], [612, 1000]]))  # rows 100..611, cols 300..999
    assert widget.region() == (300, 100, 700, 512)
    assert "700 × 512" in widget.region_text.text()
    widget.format.setCurrentIndex(widget.format.findData("ome-zarr"))
    out = tmp_path / "region.zarr"
    widget.output.set_value(str(out))
    assert widget.export() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "Exported" in widget.status.text(), widget.status.text()

    source = SlideStore.open(small_store)
    exported = SlideStore.open(out)
    assert exported.shape == (512, 700)
    np.testing.assert_array_equal(exported.image_level(0)[:], source.image_level(0)[:, 100:612, 300:1000])
    np.testing.assert_array_equal(exported.label_level(0)[:], source.label_level(0)[100:612, 300:1000])
    assert exported.provenance.get("synthetic") is True


def test_whole_slide_geojson_and_errors(viewer, qtbot, small_store, tmp_path, notifications):
    viewer.open(str(small_store), plugin="napari-diffinfinite")
    widget = ExportWidget(viewer)
    widget.format.setCurrentIndex(widget.format.findData("geojson"))
    assert widget.region() is None
    assert widget.output_path().name == "small-export.geojson"
    widget.output.set_value(str(tmp_path / "labels.geojson"))
    widget.export()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert (tmp_path / "labels.geojson").is_file()
    # exporting again to the same (remembered) path asks; "Save as" picks a fresh name
    asked = []
    widget.ask = lambda title, text, answers: asked.append(list(answers)) or answers[0]
    widget.export()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert asked == [["Save as labels-2.geojson", "Overwrite", "Cancel"]]
    assert (tmp_path / "labels-2.geojson").is_file()
    assert widget.output.value() == str(tmp_path / "labels-2.geojson")
    widget.ask = lambda title, text, answers: "Overwrite"
    widget.export()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "Exported" in widget.status.text(), widget.status.text()
    assert not [n for n in notifications if n[0] == "error"], notifications
    # a rectangle off the slide is refused in plain words
    widget.region_mode.setCurrentIndex(widget.region_mode.findData("rectangle"))
    widget.draw_rectangle().add_rectangles(np.array([[5000, 5000], [6000, 6000]]))
    assert widget.export() is None
    level, text = notifications[-1]
    assert level == "error" and "ValueError" not in text and "draw it over the slide" in text


def test_layers_in_micrometres_and_an_export_opens_at_its_place(viewer, qtbot, tmp_path):
    """A store's layers carry its pixel size (µm) and an exported region reopens over its
    source: the same tissue at the same world position."""
    from napari_diffinfinite.slide.masks import CanvasMask
    from napari_diffinfinite.slide.store import SlideStore

    source = tmp_path / "source.zarr"
    store = SlideStore.create(source, (1024, 1024), class_names=["unknown", "a", "b"],
                              class_colors=[(0, 0, 0), (255, 0, 0), (0, 255, 0)], provenance={}, pixel_size_um=0.25)  # fmt: skip
    rng = np.random.default_rng(0)
    for y0 in (0, 512):
        for x0 in (0, 512):
            store.write_tile(y0, x0, rng.integers(0, 255, (3, 512, 512), dtype=np.uint8))
    store.write_labels(CanvasMask(np.ones((4, 4), np.uint8), (1024, 1024)))
    store.mark_complete()
    image, labels = viewer.open(str(source), plugin="napari-diffinfinite")
    for layer in (image, labels):
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))
        np.testing.assert_allclose(layer.translate, (0, 0))
    assert str(image.units[0]) in ("micrometer", "um", "µm")

    widget = ExportWidget(viewer)
    widget.ask = lambda title, text, answers: "Cancel"
    widget.region_mode.setCurrentIndex(widget.region_mode.findData("rectangle"))
    # rectangle drawn in world units (µm): rows 100..611, columns 300..999 of the slide
    widget.draw_rectangle().add_rectangles(np.array([[100, 300], [612, 1000]]) * 0.25)
    assert widget.region() == (300, 100, 700, 512)
    widget.format.setCurrentIndex(widget.format.findData("ome-zarr"))
    out = tmp_path / "region.zarr"
    widget.output.set_value(str(out))
    assert widget.export() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    region, region_labels = viewer.open(str(out), plugin="napari-diffinfinite")
    for layer in (region, region_labels):
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))
        np.testing.assert_allclose(layer.translate, (100 * 0.25, 300 * 0.25))
    # the region's first pixel lies exactly on the source's pixel (100, 300)
    np.testing.assert_allclose(region.data_to_world((0, 0)), image.data_to_world((100, 300)))
    np.testing.assert_array_equal(np.asarray(region.data[0][0:5, 0:5]) if region.multiscale
                                  else np.asarray(region.data[0:5, 0:5]),
                                  np.asarray(image.data[0][100:105, 300:305]))  # fmt: skip
