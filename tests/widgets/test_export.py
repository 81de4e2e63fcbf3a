"""Export widget: a rectangle drawn in a Shapes layer exports as OME-Zarr that reads back equal."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.widgets._export import REGION_LAYER, ExportWidget, region_from_corners

pytestmark = pytest.mark.gui


def test_region_from_corners():
    assert region_from_corners([[10, 20], [60, 90]], (100, 100)) == (20, 10, 70, 50)
    assert region_from_corners([[60.4, 90.2], [9.6, 19.7]], (100, 100)) == (20, 10, 70, 50)
    assert region_from_corners([[-5, -5], [500, 30]], (100, 100)) == (0, 0, 30, 100)
    with pytest.raises(ValueError):
        region_from_corners([[200, 200], [300, 300]], (100, 100))


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
    # exporting again without overwrite is refused with a notification, not a traceback
    widget.export()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert notifications[-1][0] == "error"
