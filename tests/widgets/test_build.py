"""Every dock widget builds through the plugin manifest, in a real napari window."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

WIDGETS = {
    "DiffInfinite": "DiffInfinitePanel",
    "Checkpoints": "CheckpointWidget",
    "Mask canvas": "MaskCanvasWidget",
    "Generate": "GenerateWidget",
    "Export": "ExportWidget",
}


@pytest.mark.parametrize("name", list(WIDGETS))
def test_widget_builds_from_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-diffinfinite", name)
    assert type(widget).__name__ == WIDGETS[name]
    assert widget.state.viewer is viewer


def test_widgets_share_one_state(make_napari_viewer):
    viewer = make_napari_viewer()
    _, checkpoints = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Checkpoints")
    _, canvas = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Mask canvas")
    assert checkpoints.state is canvas.state
    other = make_napari_viewer()
    _, elsewhere = other.window.add_plugin_dock_widget("napari-diffinfinite", "Mask canvas")
    assert elsewhere.state is not canvas.state


def test_manifest_lists_contributions():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-diffinfinite")
    assert manifest.display_name == "DiffInfinite"
    assert {"Simulation", "Image Processing", "IO"} <= set(manifest.categories)
    contributions = manifest.contributions
    assert set(WIDGETS) <= {w.display_name for w in contributions.widgets}
    assert any("*.zarr" in r.filename_patterns for r in contributions.readers)
    assert len(contributions.sample_data) == 1


def test_panel_holds_every_step_and_fits_a_1080p_screen(make_napari_viewer, qtbot, tiny_image_model_dir):
    """Plugins > DiffInfinite opens one dock with the four steps as tabs; it asks for less
    height than a 1920 x 1080 screen leaves, and the class table shows every class."""
    viewer = make_napari_viewer(show=True)
    dock, panel = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "DiffInfinite")
    assert [panel.tabs.tabText(k) for k in range(panel.tabs.count())] == ["Checkpoints", "Mask canvas", "Generate",
                                                                         "Export"]  # fmt: skip
    steps = panel.steps()
    assert {type(w).__name__ for w in steps.values()} == set(WIDGETS.values()) - {"DiffInfinitePanel"}
    assert all(w.state is panel.state for w in steps.values())
    from napari_diffinfinite.widgets._panel import scale_bar

    assert scale_bar(viewer).visible
    assert dock.minimumSizeHint().height() < 700 and dock.minimumSizeHint().width() <= 480

    checkpoints = panel.show_step("Checkpoints")
    checkpoints.image_path.set_value(str(tiny_image_model_dir))
    checkpoints.use_mask.setChecked(False)
    checkpoints.load()
    qtbot.waitUntil(lambda: checkpoints.worker is None, timeout=60000)
    viewer.window._qt_window.resize(1920, 1080)
    qtbot.wait(50)
    table = checkpoints.class_table
    rows = table.rowCount()
    assert rows == len(panel.state.class_names) >= 3
    needed = table.horizontalHeader().height() + rows * table.verticalHeader().defaultSectionSize()
    assert table.height() >= needed  # not squeezed to one row
    assert viewer.window._qt_window.height() <= 1080
