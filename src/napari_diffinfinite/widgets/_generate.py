"""Generate widget: run DiffInfinite over the slide, streaming the result into napari.

Generate starts :func:`engine.generate_slide` in a worker thread with a
:class:`~napari_diffinfinite.progress.CancelToken`; Cancel sets the token, the engine stops
within one batch and leaves the store resumable, and Resume continues it. While sampling,
the engine's low-resolution x0 preview is shown over the slide; once decoding starts, the
store's RGB pyramid and labels pyramid are added as lazy multiscale layers that refresh as
tiles land (see :mod:`._layers` for why no dask cache sits in between).

Next to the button, an estimate of the job's duration (:mod:`._estimate`, from a quick
calibration after the models load); a job over ten minutes asks for confirmation first.
With a diffusers pipeline loaded, a prompt and a negative prompt are asked for (and a prompt
per class when a ControlNet sees the layout); the engine encodes them for each slide. An
output path that already exists asks whether to overwrite it or to use a fresh name.
Questions go through :attr:`GenerateWidget.ask`, which tests replace.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..progress import Cancelled
from ._common import ExistingPathQuestion, PathEdit, ask_user, hbox
from ._estimate import CONFIRM_ABOVE_S, Calibration, calibrate, describe_duration, estimate_seconds
from ._geometry import canvas_transform, world_units
from ._layers import refresh_rgb_thumbnail, slide_layer_data
from ._messages import gui_message
from ._state import get_state
from ._threading import ProgressRelay, StageProgress, notify_error, start_worker, stop_on_close

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from ..progress import ProgressEvent

PREVIEW_NAME = "DiffInfinite preview"
#: at most this often (seconds) are the streamed layers re-read while tiles land
REFRESH_INTERVAL = 1.0


def run_generation(request: Any, progress: Any = None, cancel: Any = None) -> str:
    """Run the whole job with :func:`engine.run_generate` (in the worker thread); returns the
    store path. Torch's CPU threads follow the same policy as the command line's (the cores
    free now, then the fastest count while the load changes: :mod:`napari_diffinfinite.threads`)."""
    from .. import engine
    from ..threads import adaptive_progress

    engine.run_generate(request, progress=adaptive_progress(progress), cancel=cancel)
    return str(request.path)


class GenerateWidget(QWidget):
    """Sampler settings, Generate / Cancel / Resume, progress and live layers."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.worker: Any = None
        self.cancel_token: Any = None
        self.slide_layers: list[Layer] = []
        self._store_path: Path | None = None
        self._size: tuple[int, int] | None = None
        self._relay: ProgressRelay | None = None
        self._last_refresh = 0.0
        #: asks the user a question; returns the chosen answer (tests replace it)
        self.ask = ask_user
        self.calibration: Calibration | None = None
        self._calibration_key: tuple | None = None
        self._calibration_worker: Any = None

        self.output = PathEdit(
            "generate/output", mode="save", caption="Slide store (.zarr folder)",
            file_filter="Slide store (*.zarr)", placeholder="~/diffinfinite/slide.zarr",
        )  # fmt: skip
        self.cascade = PathEdit(
            "generate/cascade", mode="open", caption="Cascade file (cascade.json)",
            file_filter="Cascade (*.json)", placeholder="none: the loaded image model alone",
        )  # fmt: skip
        self.cascade.setToolTip(
            "A multi-magnification cascade (cascade.json: models lowest magnification first) samples the "
            "slide coarse to fine; the live view fills level by level. Its classes must be the loaded model's."
        )
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setValue(250)
        self.omega = QDoubleSpinBox()
        self.omega.setRange(0.0, 50.0)
        self.omega.setSingleStep(0.5)
        self.omega.setValue(3.0)
        self.eta = QDoubleSpinBox()
        self.eta.setRange(0.0, 1.0)
        self.eta.setSingleStep(0.1)
        self.eta.setValue(1.0)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(0, 4096)
        self.batch_size.setSpecialValueText("auto")
        self.batch_size.setToolTip("Patches per batch; auto fits the device memory")

        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("e.g. H&E, colorectal adenocarcinoma, moderately differentiated")
        self.negative_prompt = QLineEdit()
        self.negative_prompt.setPlaceholderText("optional, e.g. blurry, out of focus")
        self.class_prompts = QTableWidget(0, 2)
        self.class_prompts.setHorizontalHeaderLabels(["class", "prompt (empty: the slide's prompt)"])
        self.class_prompts.verticalHeader().setVisible(False)
        self.class_prompts.horizontalHeader().setStretchLastSection(True)
        self.prompt_box = QWidget()
        prompts = QFormLayout(self.prompt_box)
        prompts.setContentsMargins(0, 0, 0, 0)
        prompts.addRow("Prompt", self.prompt)
        prompts.addRow("Negative prompt", self.negative_prompt)
        prompts.addRow(self.class_prompts)
        self.prompt_box.setVisible(False)
        self._diffusers_defaults = False

        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(lambda: self.generate())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop within one batch; the store stays resumable")
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue an interrupted store at the output path")
        self.resume_button.clicked.connect(lambda: self.resume())
        self.estimate = QLabel()
        self.estimate.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.status = QLabel("Load a checkpoint and create a mask canvas, then Generate.")
        self.status.setWordWrap(True)
        self.progress = StageProgress(self.progress_bar)
        self.state.models_changed.connect(self._on_models_changed)
        self.state.canvas_changed.connect(self.update_estimate)
        self.steps.valueChanged.connect(self.update_estimate)

        form = QFormLayout()
        form.addRow("Output", self.output)
        form.addRow("Cascade", self.cascade)
        form.addRow("Steps", self.steps)
        form.addRow("ω (guidance)", self.omega)
        form.addRow("η (eta)", self.eta)
        form.addRow("Seed", self.seed)
        form.addRow("Batch size", self.batch_size)
        layout = QVBoxLayout(self)
        layout.addWidget(self.prompt_box)
        layout.addLayout(form)
        layout.addWidget(hbox(self.generate_button, self.cancel_button, self.resume_button))
        layout.addWidget(self.estimate)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._show_prompts()
        self.calibrate()  # models loaded before this widget opened

    def _on_models_changed(self) -> None:
        """Default the number of steps (and the guidance, where the model has its own) to what the
        loaded model was trained to sample with, and time the model on its device for the estimate."""
        info = self.state.image_info or {}
        steps = info.get("sampling_steps")
        if steps:
            self.steps.setValue(int(steps))
        self._show_prompts()
        model = self.state.image_model
        if model is not None and info.get("family") != "diffusers":  # the engine's rule: the model's own, else 3
            from ..engine.request import resolve_omega

            self.omega.setValue(resolve_omega(None, model.config))
        self.calibrate()

    def _show_prompts(self) -> None:
        """Prompt fields (and per-class prompts with a ControlNet) for a diffusers pipeline,
        with diffusers' usual guidance and a deterministic scheduler."""
        info = self.state.image_info or {}
        diffusers = info.get("family") == "diffusers"
        self.prompt_box.setVisible(diffusers)
        self.class_prompts.setVisible(diffusers and bool(info.get("controlnet")))
        if diffusers != self._diffusers_defaults:  # the family's usual guidance and eta
            self.omega.setValue(6.5 if diffusers else 3.0)  # diffusers' guidance_scale 7.5; DiffInfinite's omega 3
            self.eta.setValue(0.0 if diffusers else 1.0)
            self._diffusers_defaults = diffusers
        if diffusers:
            names = self.state.class_names
            self.class_prompts.setRowCount(len(names))
            for row, name in enumerate(names):
                item = QTableWidgetItem(f"{row}: {name}")
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.class_prompts.setItem(row, 0, item)
                self.class_prompts.setItem(row, 1, QTableWidgetItem(""))
        self.omega.setToolTip("guidance strength; a diffusers pipeline's guidance_scale is ω + 1")

    def diffusers_options(self) -> Any:
        """The prompts of the form for the loaded diffusers pipeline (None for a DiffInfinite model)."""
        import dataclasses

        model = self.state.image_model
        if (self.state.image_info or {}).get("family") != "diffusers" or model is None:
            return None
        class_prompts: dict[int | str, str] = {}
        if not self.class_prompts.isHidden():  # per-class prompts are offered with a ControlNet
            for row in range(self.class_prompts.rowCount()):
                item = self.class_prompts.item(row, 1)
                if item is not None and item.text().strip():
                    class_prompts[row] = item.text().strip()
        return dataclasses.replace(
            model.options, prompt=self.prompt.text().strip(), negative_prompt=self.negative_prompt.text().strip() or None,
            class_prompts=class_prompts,
        )  # fmt: skip

    # -- estimate ---------------------------------------------------------------------
    def calibrate(self) -> Any:
        """Time one small batch of the loaded model in a worker (once per model, device,
        dtype and batch size); returns the worker, or None when there is nothing to do."""
        model = self.state.image_model
        if model is None or self._calibration_worker is not None:
            return None
        settings = self.settings()
        key = (id(model), settings.device, settings.dtype, settings.batch_size)
        if key == self._calibration_key and self.calibration is not None:
            return None
        self._calibration_key = key
        self.calibration = None
        self.estimate.setText("Estimating the duration…")

        def done(result: Calibration) -> None:
            self.calibration = result
            self.update_estimate()

        def failed(exc: BaseException) -> None:
            self.estimate.setText(f"No estimate: {gui_message(exc)}")

        def finished() -> None:
            self._calibration_worker = None

        self._calibration_worker = start_worker(
            calibrate, model, self.state.image_codec, settings, on_result=done, on_error=failed, on_finished=finished,
            owner=self,
        )  # fmt: skip
        return self._calibration_worker

    def estimated_seconds(self) -> float | None:
        """Seconds the job in the form would take (None before calibration or a canvas)."""
        if self.calibration is None or self.state.slide_shape is None:
            return None
        return estimate_seconds(self.calibration, self.state.slide_shape, int(self.steps.value()))

    def update_estimate(self, *args: Any) -> None:
        seconds = self.estimated_seconds()
        if seconds is None:
            if self.calibration is not None:
                self.estimate.setText("Create a mask canvas for a time estimate.")
            return
        h, w = self.state.slide_shape  # type: ignore[misc]
        self.estimate.setText(
            f"Estimated time: {describe_duration(seconds)} on {self.calibration.device} "  # type: ignore[union-attr]
            f"for {w:,} × {h:,} px in {int(self.steps.value())} steps."
        )

    # -- inputs -----------------------------------------------------------------------
    def output_path(self) -> Path:
        path = self.output.path()
        if path is None:
            path = Path.home() / "diffinfinite" / "slide.zarr"
        return path

    def settings(self) -> Any:
        """The :class:`engine.GenerateSettings` of the form."""
        from ..engine import GenerateSettings

        batch = int(self.batch_size.value())
        return GenerateSettings(
            steps=int(self.steps.value()), omega=float(self.omega.value()),
            eta=float(self.eta.value()), seed=int(self.seed.value()),
            batch_size=batch or None, device=self.state.device, dtype=self.state.dtype,
        )  # fmt: skip

    def request(self, out: Path, *, resume: bool = False, overwrite: bool = False) -> Any:
        """The :class:`engine.GenerateRequest` for the form: the loaded models, the painted
        canvas (new slides) or the store's own layout and settings (Resume)."""
        from ..engine import GenerateRequest, GenerateSettings, LayoutSource, LoadedModels

        models = LoadedModels(image=self.state.require_image_model(), codec=self.state.image_codec)
        diffusers = self.diffusers_options()  # the prompts must be the store's on Resume
        extra = {"diffusers": diffusers}
        cascade_file = self.cascade.path()
        if cascade_file is not None:  # the engine loads and runs the cascade (engine/cascade.py)
            from ..engine.cascade import read_cascade_file

            models, extra = None, {"cascade": read_cascade_file(cascade_file)}
        if resume:  # size, layout, steps, ω, η and seed come from the store
            settings = self.settings()
            kept = GenerateSettings(batch_size=settings.batch_size, device=settings.device, dtype=settings.dtype)
            return GenerateRequest(out=out, models=models, settings=kept, resume=True, **extra)
        canvas = self.state.mask_source().canvas
        layout = LayoutSource(canvas=canvas, info=self.state.canvas_info(canvas))
        return GenerateRequest(out=out, size=tuple(self.state.slide_shape), models=models, layout=layout,
                               settings=self.settings(), overwrite=overwrite, **extra)  # fmt: skip

    @staticmethod
    def _store_size(out: Path) -> tuple[int, int]:
        from ..slide.store import SlideStore

        return tuple(SlideStore.open(out, mode="r").shape)  # type: ignore[return-value]

    # -- actions ----------------------------------------------------------------------
    def generate(self) -> Any:
        """Start a new slide at the output path; returns the worker (None if refused)."""
        return self._start(resume=False)

    def resume(self) -> Any:
        """Continue the interrupted slide at the output path; returns the worker."""
        return self._start(resume=True)

    def cancel(self) -> None:
        """Ask the engine to stop at its next batch."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("Cancelling after the current batch…")
            self.cancel_button.setEnabled(False)

    def _confirm_long_job(self) -> bool:
        seconds = self.estimated_seconds()
        if seconds is None or seconds <= CONFIRM_ABOVE_S:
            return True
        answer = self.ask(
            "Long generation",
            f"This slide will take {describe_duration(seconds)} on {self.calibration.device}. "  # type: ignore[union-attr]
            "Start it anyway? (Cancel stops it at any time; Resume continues later.)",
            ["Start", "Cancel"],
        )
        return answer == "Start"

    def _settle_output(self, out: Path) -> tuple[Path, bool] | None:
        """The path to write and whether to overwrite it; None when the user cancelled."""
        if not out.exists():
            return out, False
        from ..slide.ownership import why_not_replaceable

        reason = why_not_replaceable(out)
        refusal = None if reason is None else f"{out} cannot be overwritten: {reason}"
        choice = ExistingPathQuestion(out).ask(self.ask, "slide store", refusal=refusal)
        if choice is None:
            return None
        if choice != out:
            self.output.set_value(str(choice))
            return choice, False
        return out, True

    def _start(self, resume: bool) -> Any:
        from ..progress import CancelToken

        if self.worker is not None:
            show_warning("A generation is already running.")
            return None
        out = self.output_path()
        overwrite = False
        try:
            self.state.require_image_model()
            if resume:
                size = self._store_size(out)
            else:
                size = tuple(self.state.mask_source().shape)
        except Exception as exc:
            self._refuse(exc)
            return None
        if not resume:
            if not self._confirm_long_job():
                return None
            settled = self._settle_output(out)
            if settled is None:
                return None
            out, overwrite = settled
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._refuse(exc)
                return None
            if overwrite:
                self._drop_slide_layers(out)
        try:
            request = self.request(out, resume=resume, overwrite=overwrite)
        except Exception as exc:
            self._refuse(exc)
            return None
        self._store_path = out
        self._size = (int(size[0]), int(size[1]))
        self.cancel_token = CancelToken()
        relay = self._relay = ProgressRelay()
        relay.reported.connect(self._on_progress)
        self._set_running(True)
        self.progress.start()
        self.status.setText(f"{'Resuming' if resume else 'Generating'} {out.name} "
                            f"({size[1]:,} × {size[0]:,} px)…")  # fmt: skip
        self.worker = start_worker(
            run_generation, request, progress=relay, cancel=self.cancel_token,
            on_result=self._on_done, on_error=self._on_error, on_finished=self._on_finished, owner=self,
        )  # fmt: skip
        stop_on_close(
            self.viewer,
            self.worker,
            self.cancel_token,
            f"generating {out.name}",
            on_close=self.progress.close,
            widget=self,
        )
        return self.worker

    def _refuse(self, exc: BaseException) -> None:
        """A job that could not start: say why in the status line (not an older outcome) and notify."""
        self.status.setText(f"Cannot start: {gui_message(exc)}")
        notify_error(exc, "Cannot start")

    def _set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # -- progress ---------------------------------------------------------------------
    def _on_progress(self, event: ProgressEvent) -> None:
        if not self.progress.update(event):
            return  # a straggler after the job ended
        if event.stage == "sample":
            if event.preview is not None:
                self._show_preview(event.preview)
            self.status.setText(f"Sampling: {event.message or f'{event.done}/{event.total}'}")
        elif event.stage == "decode":
            # the slide appears once tiles exist; until then the preview stands in for it
            if not self._layers_alive():
                self._add_slide_layers()
            self._schedule_refresh()
            self.status.setText(f"Decoding: tile {event.done}/{event.total}")
        elif event.stage == "pyramid":
            if self._layers_alive():
                self._schedule_refresh()
            self.status.setText(f"Writing labels: {event.done}/{event.total}")

    def _show_preview(self, preview: np.ndarray) -> None:
        """Show the engine's low-resolution x0 prediction stretched over the slide."""
        if self._size is None:
            return
        layer = self._preview_layer()
        scale, translate = canvas_transform(self._size, preview.shape[:2], self.state.pixel_size_um)
        if layer is None:
            self.viewer.add_image(
                preview, name=PREVIEW_NAME, rgb=preview.ndim == 3, scale=scale, translate=translate,
                contrast_limits=[0, 255], units=world_units(self.state.pixel_size_um),
            )  # fmt: skip
        else:  # one change per update: each layer event repaints the window
            if not np.allclose(layer.scale, scale) or not np.allclose(layer.translate, translate):
                layer.scale = scale
                layer.translate = translate
            layer.data = preview
            if not layer.visible:
                layer.visible = True

    def _preview_layer(self) -> Any:
        return self.viewer.layers[PREVIEW_NAME] if PREVIEW_NAME in self.viewer.layers else None

    # -- streamed layers --------------------------------------------------------------
    def _layers_alive(self) -> bool:
        return bool(self.slide_layers) and all(layer in self.viewer.layers for layer in self.slide_layers)

    def _drop_slide_layers(self, out: Path) -> None:
        """Remove layers showing ``out`` (a new slide replaces the store behind them)."""
        for layer in list(self.viewer.layers):
            if Path(str(layer.metadata.get("store_path", ""))) == out:
                self.viewer.layers.remove(layer)
        self.slide_layers = []

    def _add_slide_layers(self) -> None:
        """Add the store's RGB and label pyramids as lazy layers below the canvas."""
        from ..slide.store import SlideStore

        assert self._store_path is not None
        for layer in list(self.viewer.layers):
            if Path(str(layer.metadata.get("store_path", ""))) == self._store_path:
                self.viewer.layers.remove(layer)
        store = SlideStore.open(self._store_path, mode="r")
        self.slide_layers = []
        for data, kwargs, kind in slide_layer_data(store):
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            self.slide_layers.append(layer)
        # slide below, its labels above it, the paintable canvas and preview on top
        for index, layer in enumerate(self.slide_layers):
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
        preview = self._preview_layer()
        if preview is not None:
            preview.visible = False
        self._last_refresh = time.monotonic()
        self.state.set_store(self._store_path)

    def _schedule_refresh(self) -> None:
        """Re-read the streamed layers now if the last refresh is old enough.

        Called from the progress slot, so the refresh lands in the same window update as
        the progress bar (one repaint, which software OpenGL makes expensive); tiles written
        after the last progress event are shown by the refresh when the job ends.
        """
        if time.monotonic() - self._last_refresh >= REFRESH_INTERVAL:
            self.refresh_layers()

    def refresh_layers(self) -> None:
        """Re-read the visible tiles of the streamed layers from the store."""
        self._last_refresh = time.monotonic()
        for layer in self.slide_layers:
            if layer in self.viewer.layers:
                layer.refresh()
                if isinstance(layer, Image):
                    refresh_rgb_thumbnail(layer)

    # -- outcome ----------------------------------------------------------------------
    def _on_done(self, out: str) -> None:
        if not self.progress.active:  # the viewer closed meanwhile (stop_on_close): nothing to show
            return
        if not self._layers_alive():
            self._add_slide_layers()
        self.refresh_layers()
        preview = self._preview_layer()
        if preview is not None:
            self.viewer.layers.remove(preview)
        self.state.set_store(out)
        self.status.setText(f"Done: {out}")
        # the status line says it; a notification toast would animate (repaint) for seconds
        self.viewer.status = f"DiffInfinite: slide written to {out}"

    def _on_error(self, exc: BaseException) -> None:
        if not self.progress.active:  # the viewer closed meanwhile
            return
        if self._layers_alive():
            self.refresh_layers()
        if isinstance(exc, Cancelled):
            self.status.setText("Cancelled: the store is resumable, press Resume to continue.")
            show_info("Generation cancelled; press Resume to continue the same slide.")
        else:
            self.status.setText(f"Failed: {gui_message(exc)}")
            notify_error(exc, "Generation failed")

    def _on_finished(self) -> None:
        self.worker = None
        self.cancel_token = None
        if self._relay is not None:
            self._relay.deleteLater()
            self._relay = None
        self.progress.close()
        self._set_running(False)
