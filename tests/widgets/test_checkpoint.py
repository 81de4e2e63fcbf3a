"""Checkpoint widget: loading in a worker, showing what was loaded, errors as notifications."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite.widgets._canvas import MaskCanvasWidget  # noqa: E402
from napari_diffinfinite.widgets._checkpoint import CheckpointWidget, model_path  # noqa: E402

pytestmark = pytest.mark.gui


def _load(widget, qtbot, timeout=60000):
    assert widget.load() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_loading_tiny_models_shows_their_classes(viewer, qtbot, image_model_dir, mask_model_dir):
    expected = json.loads((image_model_dir / "config.json").read_text())["class_names"]
    widget = CheckpointWidget(viewer)
    canvas = MaskCanvasWidget(viewer)
    widget.image_path.set_value(str(image_model_dir))
    widget.mask_path.set_value(str(mask_model_dir))
    widget.use_mask.setChecked(True)
    assert widget.device.currentText() in ("cpu", "cuda")
    _load(widget, qtbot)

    state = widget.state
    assert state.image_model is not None and state.mask_model is not None
    assert widget.shown_class_names() == expected
    text = widget.info.text()
    assert "ImageUNet" in text and "parameters" in text and "float32" in text
    assert "MaskUNet" in widget.mask_info.text()
    # the canvas legend follows the loaded checkpoint, colours included
    assert [canvas.legend.item(i).text().split("  ", 1)[1] for i in range(canvas.legend.count())] == expected
    assert state.class_colors[1] == tuple(json.loads((image_model_dir / "config.json").read_text())["class_colors"][1])
    assert canvas.sample_button.isEnabled()
    # paths are remembered for the next session
    assert CheckpointWidget(viewer).image_path.value() == str(image_model_dir)


def test_model_file_inside_a_folder_means_the_folder(image_model_dir):
    assert model_path(str(image_model_dir / "config.json")) == str(image_model_dir)
    assert model_path("") is None


def test_engine_errors_are_notifications(viewer, qtbot, tmp_path, notifications):
    widget = CheckpointWidget(viewer)
    widget.image_path.set_value(str(tmp_path / "model-9.pt"))
    _load(widget, qtbot)
    assert widget.state.image_model is None
    assert notifications[-1][0] == "error"
    assert "does not exist" in notifications[-1][1]
    assert widget.load_button.isEnabled()
