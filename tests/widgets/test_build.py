"""Every dock widget builds through the plugin manifest, in a real napari window."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

WIDGETS = {
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
    assert {w.display_name for w in contributions.widgets} == set(WIDGETS)
    assert any("*.zarr" in r.filename_patterns for r in contributions.readers)
    assert len(contributions.sample_data) == 1
