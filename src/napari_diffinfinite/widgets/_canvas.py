"""Mask canvas widget: the label layout the image model follows, painted over the slide.

The canvas is a single-scale Labels layer at a reduced resolution (multiscale Labels are
read-only in napari), stretched over the full-resolution slide with ``scale`` so that
painting, the generated slide and its labels all line up in world (slide pixel)
coordinates. Class names and colours come from the loaded checkpoint; the legend picks the
brush label. The canvas can also be filled with one class, imported from a label image,
or sampled with the mask model in a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import hbox, swatch_icon
from ._geometry import auto_downsample, canvas_shape, canvas_transform, describe_length, world_units
from ._layers import label_colormap, label_features
from ._settings import recall, remember
from ._state import get_state
from ._threading import ProgressRelay, StageProgress, notify_error, start_worker, stop_on_close

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

    from ..progress import ProgressEvent

CANVAS_NAME = "DiffInfinite mask"
LABEL_IMAGE_FILTER = "Label images (*.png *.tif *.tiff *.bmp *.gif);;All files (*)"
#: the size boxes accept any value up to this; :meth:`MaskCanvasWidget.size_problem` says
#: why a value is refused instead of the box silently reverting it
MAX_SIDE = 10_000_000
#: the smallest slide side when no image model is loaded yet (the engine needs one patch)
DEFAULT_MIN_SIDE = 64


class MaskCanvasWidget(QWidget):
    """Slide size, the paintable label canvas, its legend, and ways to fill it."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.worker: Any = None
        self._cancel: Any = None
        self._relay: ProgressRelay | None = None

        self.height_px = self._size_box(int(recall("canvas/height", "16384") or 16384))
        self.width_px = self._size_box(int(recall("canvas/width", "16384") or 16384))
        self.downsample = QComboBox()
        self.downsample.addItem("auto", 0)
        for k in range(0, 8):
            self.downsample.addItem(f"{2**k}", 2**k)
        self.canvas_info = QLabel()
        self.canvas_info.setWordWrap(True)
        self.create_button = QPushButton("Create canvas")
        self.create_button.setToolTip("Add (or reset) the paintable label canvas over the slide")
        self.create_button.clicked.connect(lambda: self.create_canvas())
        for box in (self.height_px, self.width_px):
            box.valueChanged.connect(self._update_canvas_info)
        self.downsample.currentIndexChanged.connect(self._update_canvas_info)

        self.legend = QListWidget()
        self.legend.setToolTip("Click a class to paint with it")
        self.legend.setMaximumHeight(180)
        self.legend.currentRowChanged.connect(self._pick_label)
        self.fill_button = QPushButton("Fill with class")
        self.fill_button.setToolTip("Set every canvas pixel to the class selected in the legend")
        self.fill_button.clicked.connect(lambda: self.fill(self.legend.currentRow()))
        self.import_button = QPushButton("Import label image…")
        self.import_button.clicked.connect(self._browse_label_image)

        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.omega = QDoubleSpinBox()
        self.omega.setRange(0.0, 20.0)
        self.omega.setSingleStep(0.5)
        self.condition = QComboBox()
        self.layout_steps = QSpinBox()
        self.layout_steps.setRange(0, 1000)
        self.layout_steps.setSpecialValueText("model default")
        self.sample_button = QPushButton("Sample layout")
        self.sample_button.setToolTip("Sample a tissue layout with the mask model (background thread)")
        self.sample_button.clicked.connect(lambda: self.sample_layout())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress = StageProgress(self.progress_bar)

        size_group = QGroupBox("Slide")
        size_form = QFormLayout(size_group)
        size_form.addRow("Height (px)", self.height_px)
        size_form.addRow("Width (px)", self.width_px)
        size_form.addRow("Canvas downsample", self.downsample)
        size_form.addRow(self.canvas_info)
        size_form.addRow(self.create_button)

        classes_group = QGroupBox("Classes (brush label)")
        classes_layout = QVBoxLayout(classes_group)
        classes_layout.addWidget(self.legend)
        classes_layout.addWidget(hbox(self.fill_button, self.import_button))

        sample_group = QGroupBox("Layout from the mask model")
        sample_form = QFormLayout(sample_group)
        sample_form.addRow("Seed", self.seed)
        sample_form.addRow("ω (guidance)", self.omega)
        sample_form.addRow("Condition", self.condition)
        sample_form.addRow("Steps", self.layout_steps)
        sample_form.addRow(hbox(self.sample_button, self.cancel_button))

        layout = QVBoxLayout(self)
        layout.addWidget(size_group)
        layout.addWidget(classes_group)
        layout.addWidget(sample_group)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.state.models_changed.connect(self._on_models_changed)
        self.state.models_changed.connect(self._update_canvas_info)
        self.state.canvas_changed.connect(self._update_canvas_info)
        self._on_models_changed()
        self._update_canvas_info()
        self._update_status()

    @staticmethod
    def _size_box(value: int) -> QSpinBox:
        box = QSpinBox()
        box.setRange(1, MAX_SIDE)
        box.setSingleStep(512)
        box.setGroupSeparatorShown(True)
        box.setValue(value)
        return box

    # -- geometry ---------------------------------------------------------------------
    def slide_shape(self) -> tuple[int, int]:
        return (self.height_px.value(), self.width_px.value())

    def set_slide_shape(self, height: int, width: int) -> None:
        self.height_px.setValue(int(height))
        self.width_px.setValue(int(width))

    def factor(self) -> int:
        chosen = int(self.downsample.currentData() or 0)
        return chosen or auto_downsample(self.slide_shape())

    def min_side(self) -> int:
        """The smallest slide side the loaded image model can generate: one patch."""
        return int((self.state.image_info or {}).get("patch_size") or DEFAULT_MIN_SIDE)

    def size_problem(self) -> str | None:
        """Why the slide size in the boxes cannot be used, or None when it can."""
        side = self.min_side()
        h, w = self.slide_shape()
        if min(h, w) < side:
            return (f"A {w:,} × {h:,} px slide is too small: the model generates patches of {side} px, "
                    f"so each side must be at least {side} px.")  # fmt: skip
        return None

    def _update_canvas_info(self, *args: Any) -> None:
        """Describe the canvas as it is (when it matches the size boxes) or as it will be."""
        problem = self.size_problem()
        self.create_button.setEnabled(problem is None and self.worker is None)
        self.create_button.setToolTip(problem or "Add (or reset) the paintable label canvas over the slide")
        if problem is not None:
            self.canvas_info.setText(f"<span style='color:#e8a33d'>{problem}</span>")
            return
        px = self.state.pixel_size_um
        h, w = self.slide_shape()
        layer = self.layer
        if layer is not None and self.state.slide_shape == (h, w):
            ch, cw = layer.data.shape
            where = "current canvas"
        else:
            ch, cw = canvas_shape((h, w), self.factor())
            where = "Create canvas makes"
        ky, kx = h / ch, w / cw
        per = f"{kx:.3g} × {ky:.3g}" if abs(ky - kx) > 1e-9 else f"{ky:.3g} × {ky:.3g}"  # width x height
        self.canvas_info.setText(
            f"Slide {describe_length(w, px)} × {describe_length(h, px)}; {where} {cw:,} × {ch:,} px "
            f"(1 canvas px = {per} slide px)."
        )

    # -- canvas -----------------------------------------------------------------------
    @property
    def layer(self) -> Labels | None:
        return self.state.canvas_layer

    def create_canvas(self, fill: int = 0) -> Labels | None:
        """Add (or reset) the canvas layer for the current slide size, filled with ``fill``.

        Returns None (and says why) when the size boxes hold a size the model cannot use.
        """
        problem = self.size_problem()
        if problem is not None:
            show_warning(problem)
            return None
        shape = self.slide_shape()
        remember("canvas/height", str(shape[0]))
        remember("canvas/width", str(shape[1]))
        canvas = np.full(canvas_shape(shape, self.factor()), fill, dtype=np.uint8)
        layer = self._set_canvas(canvas, shape)
        self.viewer.reset_view()
        return layer

    def _set_canvas(self, canvas: np.ndarray, shape: tuple[int, int]) -> Labels:
        """Show ``canvas`` as the mask over a slide of ``shape`` (reusing the layer)."""
        self.state.set_canvas_origin(None, None)  # a sampled layout says so again once set (sample_layout)
        scale, translate = canvas_transform(shape, canvas.shape, self.state.pixel_size_um)
        layer = self.layer
        self.state.slide_shape = (int(shape[0]), int(shape[1]))
        if layer is None:
            layer = self.viewer.add_labels(
                canvas, name=CANVAS_NAME, scale=scale, translate=translate, opacity=0.5,
                colormap=label_colormap(self.state.class_colors),
                units=world_units(self.state.pixel_size_um),
            )  # fmt: skip
            self._style_layer(layer)
            layer.events.selected_label.connect(self._sync_legend)
        else:
            layer.data = canvas
            self._place(layer, scale, translate)
        layer.metadata["slide_shape"] = self.state.slide_shape
        self.state.canvas_layer = layer  # emits canvas_changed
        self._update_status()
        return layer

    def _place(self, layer: Labels, scale: tuple, translate: tuple) -> None:
        units = world_units(self.state.pixel_size_um)
        if units is not None:
            layer.units = units
        layer.scale = scale
        layer.translate = translate

    def _style_layer(self, layer: Labels) -> None:
        layer.colormap = label_colormap(self.state.class_colors)
        features = label_features(self.state.class_names)
        if features is not None:
            layer.features = features
        layer.brush_size = max(layer.brush_size, 10)

    def fill(self, label: int) -> None:
        """Set every canvas pixel to ``label`` (creating the canvas if needed)."""
        label = max(int(label), 0)
        layer = self.layer
        if layer is None:
            self.create_canvas(fill=label)
            return
        layer.data[...] = label
        layer.refresh()
        self._update_status()
        self._update_canvas_info()

    def set_canvas(self, canvas: np.ndarray) -> Labels:
        """Use ``canvas`` (any size) as the mask, stretched over the current slide size."""
        return self._set_canvas(np.ascontiguousarray(canvas, dtype=np.uint8), self.slide_shape())

    def _update_status(self) -> None:
        layer = self.layer
        if layer is None:
            self.status.setText("No canvas yet: set the slide size and press Create canvas.")
            return
        h, w = self.state.slide_shape or self.slide_shape()
        ch, cw = layer.data.shape
        self.status.setText(f"Canvas {cw:,} × {ch:,} px over a {w:,} × {h:,} px slide.")

    # -- legend -----------------------------------------------------------------------
    def _on_models_changed(self) -> None:
        names, colors = self.state.class_names, self.state.class_colors
        self.legend.blockSignals(True)
        self.legend.clear()
        for label, name in enumerate(names):
            item = QListWidgetItem(swatch_icon(colors[label] if label < len(colors) else (128,) * 3),
                                   f"{label}  {name}")  # fmt: skip
            self.legend.addItem(item)
        self.legend.blockSignals(False)
        layer = self.layer
        if layer is not None:
            self._style_layer(layer)
            self._sync_legend()
            if self.state.slide_shape is not None:  # the new model may have another pixel size
                self._place(
                    layer, *canvas_transform(self.state.slide_shape, layer.data.shape, self.state.pixel_size_um)
                )
        elif names:
            self.legend.setCurrentRow(min(1, len(names) - 1))
        self.condition.clear()
        mask_info = self.state.mask_info or {}
        model = self.state.mask_model
        conditions = list(getattr(getattr(model, "config", None), "condition_names", None) or [])
        if not conditions and model is not None:
            conditions = [f"condition {k}" for k in range(int(mask_info.get("num_classes") or 2))]
        for k, name in enumerate(conditions):
            self.condition.addItem(f"{k}  {name}", k)
        if self.condition.count() > 1:
            self.condition.setCurrentIndex(1)
        has_mask = model is not None
        self.sample_button.setEnabled(has_mask and self.worker is None)
        self.sample_button.setToolTip(
            "Sample a tissue layout with the mask model (background thread)" if has_mask
            else "Load a mask model in the Checkpoints widget first"
        )  # fmt: skip

    def _pick_label(self, row: int) -> None:
        layer = self.layer
        if layer is None or row < 0:
            return
        layer.selected_label = row
        self.viewer.layers.selection.active = layer
        if layer.mode not in ("paint", "fill"):
            layer.mode = "paint"

    def _sync_legend(self, event: Any = None) -> None:
        layer = self.layer
        if layer is None:
            return
        row = int(layer.selected_label)
        if 0 <= row < self.legend.count() and self.legend.currentRow() != row:
            self.legend.blockSignals(True)
            self.legend.setCurrentRow(row)
            self.legend.blockSignals(False)

    # -- import -----------------------------------------------------------------------
    def _browse_label_image(self) -> None:
        start = recall("canvas/label_image")
        path, _ = QFileDialog.getOpenFileName(self, "Label image", start, LABEL_IMAGE_FILTER)
        if path:
            remember("canvas/label_image", path)
            self.import_label_image(path)

    def import_label_image(self, path: str) -> Any:
        """Read a label image in a worker thread and make it the canvas; returns the worker."""
        from ..slide.masks import load_label_image, validate_labels

        num_classes = len(self.state.class_names)
        names = self.state.class_names

        def _read() -> np.ndarray:
            canvas = load_label_image(path)
            validate_labels(canvas, num_classes, names)
            return canvas

        return self._run(_read, what="Importing the label image", on_result=self._on_canvas_ready)

    # -- mask model -------------------------------------------------------------------
    def sample_layout(self) -> Any:
        """Sample a layout with the mask model in a worker thread; returns the worker."""
        from ..engine import sample_layout
        from ..progress import CancelToken

        if self.state.mask_model is None:
            show_warning("Load a mask model in the Checkpoints widget first.")
            return None
        from ..engine.layout import LayoutSource, resolved_sampling, sampled_layout_info

        self._cancel = CancelToken()
        relay = self._relay = ProgressRelay()
        relay.reported.connect(self._on_progress)
        condition = self.condition.currentData()
        chosen = LayoutSource(mask_model=self.state.mask_model, condition=condition, omega=float(self.omega.value()),
                              steps=int(self.layout_steps.value()) or None)  # fmt: skip
        options = resolved_sampling(chosen, self.state.mask_model, int(self.seed.value()))
        info = sampled_layout_info(self.state.mask_model, options)  # the slide's provenance, if left unpainted

        def sampled(canvas: np.ndarray) -> None:
            if self._on_canvas_ready(canvas) and self.layer is not None:
                self.state.set_canvas_origin(np.asarray(self.layer.data), info)

        return self._run(
            sample_layout, self.state.mask_model, self.state.mask_codec, self.slide_shape(), **options,
            device=self.state.device, dtype=self.state.dtype, progress=relay, cancel=self._cancel,
            what="Sampling a layout", on_result=sampled,
        )  # fmt: skip

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, event: ProgressEvent) -> None:
        if self.progress.update(event):
            self.status.setText(f"Sampling the layout: {event.message or f'{event.done}/{event.total}'}")

    def _on_canvas_ready(self, canvas: np.ndarray) -> bool:
        """Show a sampled or imported canvas; False when the viewer closed meanwhile."""
        from ..slide.masks import validate_labels

        if not self.progress.active:  # the viewer closed meanwhile (stop_on_close)
            return False
        try:
            validate_labels(canvas, len(self.state.class_names), self.state.class_names)
        except Exception as exc:  # show, but keep the layout: the user can repaint
            notify_error(exc, "The layout does not fit the image model")
        self.set_canvas(canvas)
        show_info(f"Mask canvas set ({canvas.shape[1]:,} × {canvas.shape[0]:,} px).")  # width x height, as elsewhere
        return True

    def _run(self, func: Any, *args: Any, what: str = "", on_result: Any = None, **kwargs: Any) -> Any:
        if self.worker is not None:
            show_warning("The mask canvas is busy; wait or cancel first.")
            return None
        for button in (self.sample_button, self.import_button, self.create_button, self.fill_button):
            button.setEnabled(False)
        self.cancel_button.setEnabled(self._cancel is not None)
        self.progress.start()
        self.status.setText(f"{what or 'Working'}…")
        self.worker = start_worker(
            func, *args, on_result=on_result,
            on_error=lambda exc: notify_error(exc, what), on_finished=self._on_finished, owner=self, **kwargs,
        )  # fmt: skip
        if self._cancel is not None:
            stop_on_close(
                self.viewer,
                self.worker,
                self._cancel,
                what.lower() or "working",
                on_close=self.progress.close,
                widget=self,
            )
        return self.worker

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel = None
        if self._relay is not None:
            self._relay.deleteLater()
            self._relay = None
        self.progress.close()
        for button in (self.import_button, self.fill_button):
            button.setEnabled(True)
        self.sample_button.setEnabled(self.state.mask_model is not None)
        self.cancel_button.setEnabled(False)
        self._update_status()
        self._update_canvas_info()
