"""The DiffInfinite panel: the four steps of the journey as tabs of one dock.

Plugins > DiffInfinite > DiffInfinite opens Checkpoints, Mask canvas, Generate and Export
in one dock widget. Each tab scrolls on its own, so the dock fits a 1080 px high screen
without squeezing any step (the class table keeps its rows). The four widgets share the
viewer's state exactly as when they are opened one by one. Opening the panel also shows
napari's scale bar: DiffInfinite layers are placed in micrometres.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._canvas import MaskCanvasWidget
from ._checkpoint import CheckpointWidget
from ._export import ExportWidget
from ._generate import GenerateWidget
from ._state import get_state

if TYPE_CHECKING:
    import napari

#: the panel never asks for more width than this (napari's dock area stays usable)
PANEL_WIDTH = 420


def scale_bar(viewer):
    """The viewer's scale bar overlay: ``viewer.canvas.overlays.scale_bar`` since napari 0.9
    (``viewer.scale_bar``, deprecated there, before)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "scale_bar", None) or viewer.scale_bar


class DiffInfinitePanel(QWidget):
    """Checkpoints, Mask canvas, Generate and Export as tabs of one dock."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.checkpoints = CheckpointWidget(napari_viewer)
        self.canvas = MaskCanvasWidget(napari_viewer)
        self.generate = GenerateWidget(napari_viewer)
        self.export = ExportWidget(napari_viewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for title, widget in self.steps().items():
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setWidget(widget)
            self.tabs.addTab(scroll, title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(PANEL_WIDTH)
        scale_bar(napari_viewer).visible = True
        self.state.store_changed.connect(self._refresh_export_sources)

    def steps(self) -> dict[str, QWidget]:
        """The tab titles and their widgets, in the order of the journey."""
        return {
            "Checkpoints": self.checkpoints,
            "Mask canvas": self.canvas,
            "Generate": self.generate,
            "Export": self.export,
        }

    def show_step(self, title: str) -> QWidget:
        """Bring the tab ``title`` to the front and return its widget."""
        titles = list(self.steps())
        self.tabs.setCurrentIndex(titles.index(title))
        return self.steps()[title]

    def _refresh_export_sources(self, *args: object) -> None:
        self.export._refresh_sources()
