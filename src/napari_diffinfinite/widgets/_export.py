"""Export widget: write a region (a rectangle drawn in a Shapes layer) or the whole slide.

Formats come from :func:`napari_diffinfinite.slide.export.export_slide`: OME-Zarr with its
labels, pyramidal OME-TIFF, OpenSlide-compatible TIFF, GeoJSON labels for QuPath. The export
runs in a worker thread with a progress bar and a Cancel button. An output path that
already exists (a remembered one, say) asks whether to overwrite it or to use a fresh name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import ExistingPathQuestion, PathEdit, ask_user, hbox
from ._geometry import region_from_corners
from ._messages import gui_message
from ._state import get_state, unwrap
from ._threading import ProgressRelay, StageProgress, notify_error, start_worker, stop_on_close

if TYPE_CHECKING:
    import napari
    from napari.layers import Shapes

    from ..progress import ProgressEvent

REGION_LAYER = "export region"
#: format -> (label in the combo box, file suffix)
FORMATS: dict[str, tuple[str, str]] = {
    "ome-zarr": ("OME-Zarr (image + labels)", ".zarr"),
    "ome-tiff": ("Pyramidal OME-TIFF (QuPath / Bio-Formats)", ".ome.tif"),
    "tiff": ("Tiled TIFF (OpenSlide)", ".tif"),
    "geojson": ("GeoJSON labels (QuPath)", ".geojson"),
}


__all__ = ["ExportWidget", "FORMATS", "REGION_LAYER", "region_from_corners"]


class ExportWidget(QWidget):
    """Choose a slide, a region and a format, then export in a worker thread."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.worker: Any = None
        self.cancel_token: Any = None
        self._watched: Any = None
        self.last_result: Any = None
        #: asks the user a question; returns the chosen answer (tests replace it)
        self.ask = ask_user
        self._relay: ProgressRelay | None = None

        self.source = QComboBox()
        self.source.setToolTip("Slide layers opened from a slide store")
        self.region_mode = QComboBox()
        self.region_mode.addItem("Whole slide", "whole")
        self.region_mode.addItem("Rectangle in the 'export region' layer", "rectangle")
        self.region_mode.currentIndexChanged.connect(self._update_region_text)
        self.draw_button = QPushButton("Draw rectangle")
        self.draw_button.setToolTip("Add a Shapes layer and start drawing a rectangle")
        self.draw_button.clicked.connect(self.draw_rectangle)
        self.region_text = QLabel()
        self.region_text.setWordWrap(True)
        self.format = QComboBox()
        for key, (label, _) in FORMATS.items():
            self.format.addItem(label, key)
        self.format.currentIndexChanged.connect(self._fix_suffix)
        self.output = PathEdit(
            "export/output", mode="save", caption="Export to", placeholder="next to the slide",
        )  # fmt: skip
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(lambda: self.export())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress = StageProgress(self.progress_bar)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Slide", self.source)
        form.addRow("Region", self.region_mode)
        form.addRow("", hbox(self.draw_button, stretch_last=True))
        form.addRow("", self.region_text)
        form.addRow("Format", self.format)
        form.addRow("Output", self.output)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(hbox(self.export_button, self.cancel_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_sources)
        events.removed.connect(self._refresh_sources)
        self.state.store_changed.connect(self._refresh_sources)
        self._refresh_sources()
        self._update_region_text()

    # -- sources ----------------------------------------------------------------------
    def _slide_layers(self) -> list[Image]:
        return [
            layer for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.metadata.get("store_path")
        ]  # fmt: skip

    def _refresh_sources(self, event: Any = None) -> None:
        current = self.source.currentData()
        self.source.blockSignals(True)
        self.source.clear()
        for layer in self._slide_layers():
            self.source.addItem(layer.name, layer.metadata["store_path"])
        if current is not None:
            index = self.source.findData(current)
            if index >= 0:
                self.source.setCurrentIndex(index)
        elif self.state.store_path is not None:
            index = self.source.findData(str(self.state.store_path))
            if index >= 0:
                self.source.setCurrentIndex(index)
        self.source.blockSignals(False)
        self._watch_region_layer()
        self._update_region_text()

    def source_layer(self) -> Image | None:
        path = self.source.currentData()
        for layer in self._slide_layers():
            if layer.metadata.get("store_path") == path:
                return layer
        return None

    def source_path(self) -> Path | None:
        path = self.source.currentData()
        return Path(path) if path else None

    def slide_shape(self) -> tuple[int, int] | None:
        layer = self.source_layer()
        if layer is None:
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        return (int(data.shape[0]), int(data.shape[1]))

    # -- region -----------------------------------------------------------------------
    def region_layer(self) -> Shapes | None:
        return self.viewer.layers[REGION_LAYER] if REGION_LAYER in self.viewer.layers else None

    def draw_rectangle(self) -> Shapes:
        """Add (or select) the region Shapes layer in rectangle-drawing mode."""
        layer = self.region_layer()
        if layer is None:
            # in the slide's world units (µm), so napari's scale bar keeps its unit
            source = self.source_layer()
            units = {"units": source.units} if source is not None else {}
            layer = self.viewer.add_shapes(
                name=REGION_LAYER, edge_color="yellow", face_color="transparent", edge_width=4, **units,
            )  # fmt: skip
        self._watch_region_layer()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.region_mode.setCurrentIndex(self.region_mode.findData("rectangle"))
        return layer

    def _watch_region_layer(self) -> None:
        layer = self.region_layer()
        if layer is not None and unwrap(layer) is not self._watched:
            layer.events.data.connect(self._update_region_text)
            layer.events.highlight.connect(self._update_region_text)
            self._watched = unwrap(layer)

    def region(self) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) in level-0 slide pixels, or None for the whole slide.

        Takes the selected rectangle of the region layer (else its last shape), mapped
        through world coordinates into the slide layer's pixels.
        """
        if self.region_mode.currentData() != "rectangle":
            return None
        shapes = self.region_layer()
        if shapes is None or len(shapes.data) == 0:
            raise ValueError("draw a rectangle first (Draw rectangle), or export the whole slide")
        selected = sorted(shapes.selected_data)
        corners = np.asarray(shapes.data[selected[-1] if selected else -1])
        world = np.array([shapes.data_to_world(c) for c in corners])
        slide = self.source_layer()
        if slide is not None:
            world = np.array([np.asarray(slide.world_to_data(p))[:2] for p in world])
        shape = self.slide_shape()
        if shape is None:
            raise ValueError("no slide to export: open or generate a slide store first")
        return region_from_corners(world, shape)

    def _update_region_text(self, event: Any = None) -> None:
        try:
            region = self.region()
        except ValueError as exc:
            self.region_text.setText(str(exc) if self.region_mode.currentData() == "rectangle" else "")
            return
        if region is None:
            shape = self.slide_shape()
            self.region_text.setText(f"{shape[1]:,} × {shape[0]:,} px" if shape else "")
        else:
            x, y, w, h = region
            self.region_text.setText(f"x {x:,}, y {y:,}, {w:,} × {h:,} px")

    # -- output -----------------------------------------------------------------------
    def fmt(self) -> str:
        return str(self.format.currentData())

    def output_path(self) -> Path:
        """The target path; by default next to the slide, named after it and the format."""
        chosen = self.output.path()
        if chosen is not None:
            return chosen
        src = self.source_path() or Path.home() / "slide.zarr"
        stem = src.name.removesuffix(".zarr")
        suffix = "-region" if self.region_mode.currentData() == "rectangle" else "-export"
        return src.parent / f"{stem}{suffix}{FORMATS[self.fmt()][1]}"

    def _fix_suffix(self) -> None:
        chosen = self.output.path()
        if chosen is None:
            return
        name = chosen.name
        for _, suffix in FORMATS.values():
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        self.output.set_value(str(chosen.with_name(name + FORMATS[self.fmt()][1])))

    # -- actions ----------------------------------------------------------------------
    def export(self) -> Any:
        """Start the export in a worker thread; returns the worker (None if refused)."""
        from ..progress import CancelToken
        from ..slide.export import export_slide

        if self.worker is not None:
            show_warning("An export is already running.")
            return None
        src = self.source_path()
        if src is None:
            notify_error(ValueError("no slide to export: open or generate a slide store first"), "Export")
            return None
        try:
            region = self.region()
        except ValueError as exc:
            notify_error(exc, "Export")
            return None
        out = self.output_path()
        overwrite = False
        if out.exists():
            from ..slide.ownership import why_not_replaceable

            reason = why_not_replaceable(out, export=True)
            refusal = None if reason is None else f"{out} cannot be overwritten: {reason}"
            choice = ExistingPathQuestion(out).ask(self.ask, "export", refusal=refusal)
            if choice is None:
                return None
            overwrite = choice == out
            if not overwrite:
                out = choice
                if self.output.path() is not None:
                    self.output.set_value(str(out))
        self.cancel_token = CancelToken()
        relay = self._relay = ProgressRelay()
        relay.reported.connect(self._on_progress)
        self.export_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.start()
        self.status.setText(f"Exporting to {out}…")
        self.worker = start_worker(
            export_slide, src, out, self.fmt(), region,
            overwrite=overwrite, progress=relay, cancel=self.cancel_token,
            on_result=self._on_done, on_error=self._on_error, on_finished=self._on_finished, owner=self,
        )  # fmt: skip
        stop_on_close(
            self.viewer,
            self.worker,
            self.cancel_token,
            f"exporting {out.name}",
            on_close=self.progress.close,
            widget=self,
        )
        return self.worker

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress.update(event)

    def _on_done(self, result: Any) -> None:
        self.last_result = result
        self.status.setText(f"Exported: {result}")
        show_info(f"Exported {result}")
        for warning in getattr(result, "warnings", None) or []:
            show_warning(str(warning))

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Export stopped: {gui_message(exc)}")
        notify_error(exc, "Export")

    def _on_finished(self) -> None:
        self.worker = None
        self.cancel_token = None
        if self._relay is not None:
            self._relay.deleteLater()
            self._relay = None
        self.progress.close()
        self.export_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
