"""The mask canvas: a paintable single-scale Labels layer over the slide, used by the engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite.widgets._canvas import CANVAS_NAME, MaskCanvasWidget  # noqa: E402

pytestmark = pytest.mark.gui


def test_canvas_layer_overlays_the_slide(viewer):
    widget = MaskCanvasWidget(viewer)
    widget.set_slide_shape(16384, 16384)
    layer = widget.create_canvas()
    assert layer.name == CANVAS_NAME and not layer.multiscale
    assert layer.data.shape == (2048, 2048)
    np.testing.assert_allclose(layer.scale, (8, 8))
    # canvas pixel 0 covers slide pixels 0..7: its centre sits at world 3.5
    np.testing.assert_allclose(layer.data_to_world((0, 0)), (3.5, 3.5))
    assert widget.state.canvas_layer is layer
    assert widget.state.slide_shape == (16384, 16384)
    assert "2,048" in widget.canvas_info.text()


def test_painting_changes_the_mask_the_engine_uses(viewer):
    widget = MaskCanvasWidget(viewer)
    widget.set_slide_shape(4096, 4096)  # factor 2: canvas 2048 x 2048
    widget.downsample.setCurrentIndex(widget.downsample.findData(16))
    layer = widget.create_canvas()
    assert layer.data.shape == (256, 256)
    widget.legend.setCurrentRow(2)  # the legend picks the brush label
    assert layer.selected_label == 2 and layer.mode == "paint"
    before = widget.state.mask_source().region(0, 4096, 0, 4096, step=16)
    assert before.max() == 0
    layer.brush_size = 10
    layer.paint((100, 50), layer.selected_label)  # canvas px -> slide px 1600, 800
    mask = widget.state.mask_source()
    assert mask.shape == (4096, 4096)
    assert mask.region(1600, 1601, 800, 801)[0, 0] == 2
    assert mask.region(0, 1, 4000, 4001)[0, 0] == 0
    # the engine gets a frozen copy: painting afterwards does not change it
    layer.paint((0, 250), 1)
    assert mask.region(0, 1, 4000, 4001)[0, 0] == 0
    assert widget.state.mask_source().region(0, 1, 4000, 4001)[0, 0] == 1


def test_fill_and_legend(viewer):
    widget = MaskCanvasWidget(viewer)
    widget.set_slide_shape(1024, 2048)
    widget.create_canvas()
    assert widget.legend.count() == len(widget.state.class_names)
    widget.fill(3)
    assert (widget.layer.data == 3).all()
    widget.layer.selected_label = 1
    assert widget.legend.currentRow() == 1


def test_import_label_image(viewer, qtbot, tmp_path):
    widget = MaskCanvasWidget(viewer)
    widget.set_slide_shape(2048, 2048)
    labels = np.zeros((100, 50), np.uint8)
    labels[50:] = 2
    Image.fromarray(labels, mode="L").save(tmp_path / "mask.png")
    assert widget.import_label_image(str(tmp_path / "mask.png")) is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10000)
    layer = widget.layer
    np.testing.assert_array_equal(layer.data, labels)
    np.testing.assert_allclose(layer.scale, (2048 / 100, 2048 / 50))
    mask = widget.state.mask_source()
    assert mask.region(2047, 2048, 0, 1)[0, 0] == 2 and mask.region(0, 1, 0, 1)[0, 0] == 0


def test_bad_label_image_is_a_notification(viewer, qtbot, tmp_path, notifications):
    widget = MaskCanvasWidget(viewer)
    Image.fromarray(np.full((8, 8), 9, np.uint8), mode="L").save(tmp_path / "bad.png")
    assert widget.import_label_image(str(tmp_path / "bad.png")) is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10000)
    assert widget.layer is None
    assert notifications and notifications[-1][0] == "error"
    assert "label values" in notifications[-1][1]
