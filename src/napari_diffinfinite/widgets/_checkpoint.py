"""Checkpoint widget: choose and load the image model, the mask model and the VAE, or a
diffusers pipeline (with an optional ControlNet and LoRA weights).

Paths are remembered between sessions. Loading runs in a worker thread; what was loaded
(architecture, classes with names and colours, parameter count, device, dtype) is shown
below the buttons and shared with the other widgets through the viewer's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import CheckpointError
from ._common import PathEdit, human_count, swatch_icon
from ._settings import recall, remember
from ._state import class_rgb, get_state
from ._threading import notify_error, start_worker

if TYPE_CHECKING:
    import napari

MODEL_FILTER = "DiffInfinite models (*.pt *.pth *.ckpt config.json *.safetensors);;All files (*)"
FAMILIES = ("DiffInfinite", "diffusers")
PRECISIONS = ("float32", "float16", "bfloat16")
#: the class table shows this many rows before it scrolls
TABLE_ROWS = 10


def model_path(text: str) -> str | None:
    """The path to hand the engine: ``None`` for the embedded default model; a folder
    when the user picked ``config.json`` or ``model.safetensors`` inside our format."""
    if not text:
        return None
    path = Path(text).expanduser()
    if path.is_file() and path.name in ("config.json", "model.safetensors"):
        return str(path.parent)
    return str(path)


def load_checkpoints(
    image_path: str | None,
    mask_path: str | None,
    use_mask: bool,
    vae: str | None,
    device: str,
    dtype: str,
) -> dict[str, Any]:
    """Load the models and their codecs (runs in the worker thread).

    The VAE folder is only handed to a model that works in VAE latents; pixel-space
    models get their own identity codec, so one VAE field serves both models.
    """
    from .. import engine

    image = engine.load_image_model(image_path, device=device, dtype=dtype)
    image_codec = engine.load_codec(_codec_spec(image, vae), image, device=device, dtype=dtype)
    result: dict[str, Any] = {
        "image_model": image,
        "image_codec": image_codec,
        "image_info": engine.describe_model(image),
        "mask_model": None,
        "mask_codec": None,
        "mask_info": None,
        "device": device,
        "dtype": dtype,
    }
    if use_mask:
        # an official mask checkpoint does not record how many labels it draws: the image
        # model's class count (ignored for our folders, which record it)
        mask = engine.load_mask_model(mask_path, device=device, dtype=dtype,
                                      num_labels=len(image.config.class_names))  # fmt: skip
        result["mask_model"] = mask
        result["mask_codec"] = engine.load_codec(_codec_spec(mask, vae), mask, device=device, dtype=dtype)
        result["mask_info"] = engine.describe_model(mask)
    return result


def load_pipeline(pipeline: str, controlnet: str | None, lora: str | None, device: str, dtype: str) -> dict[str, Any]:
    """Load a diffusers pipeline (+ ControlNet, + LoRA) as the image model (runs in the worker thread).

    The prompts are given in the Generate widget; the engine encodes them per slide."""
    from .. import engine
    from ..diffusers_backend.model import DiffusersOptions, load_diffusers

    options = DiffusersOptions(pipeline=pipeline, controlnet=controlnet, lora=lora)
    model, codec = load_diffusers(options, device=engine.resolve_device(device), dtype=engine.resolve_dtype(dtype))
    return {"image_model": model, "image_codec": codec, "image_info": model.describe(), "mask_model": None,
            "mask_codec": None, "mask_info": None, "device": device, "dtype": dtype}  # fmt: skip


def _codec_spec(model: Any, vae: str | None) -> str | None:
    codec = getattr(getattr(model, "config", None), "codec", None)
    return None if codec == "identity" else vae


def describe_html(info: dict[str, Any] | None, title: str) -> str:
    """A short rich-text summary of :func:`engine.describe_model` output."""
    if not info:
        return f"<b>{title}</b>: not loaded"
    sha = str(info.get("sha256") or "")[:12] or "–"
    source = info.get("source") or "embedded default"
    return (
        f"<b>{title}</b>: {info.get('architecture', '?')}<br>"
        f"{human_count(info.get('parameters'))} parameters · {info.get('num_classes', '?')} classes · "
        f"{info.get('device', '?')} / {info.get('dtype', '?')}<br>"
        f"<small>{source} · sha256 {sha}</small>"
    )


class CheckpointWidget(QWidget):
    """Pick the image model, the mask model and the VAE folder, then load them."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.worker: Any = None

        self.image_path = PathEdit(
            "checkpoints/image_model", caption="Image model (model-N.pt or model folder)",
            file_filter=MODEL_FILTER, placeholder="embedded default model",
        )  # fmt: skip
        self.mask_path = PathEdit(
            "checkpoints/mask_model", caption="Mask model (model-N.pt or model folder)",
            file_filter=MODEL_FILTER, placeholder="embedded default mask model",
        )  # fmt: skip
        self.use_mask = QCheckBox("load a mask model (to sample layouts)")
        self.use_mask.setChecked(recall("checkpoints/use_mask", "true") == "true")
        self.use_mask.toggled.connect(lambda on: remember("checkpoints/use_mask", "true" if on else "false"))
        self.vae_path = PathEdit(
            "checkpoints/vae", mode="dir", caption="Stable Diffusion 2 VAE folder",
            placeholder="only for latent models (SD-2 VAE folder)",
        )  # fmt: skip
        self.family = QComboBox()
        self.family.addItems(FAMILIES)
        self.family.setToolTip("DiffInfinite checkpoints, or a diffusers pipeline (text prompts, ControlNet, LoRA)")
        self.pipeline_path = PathEdit(
            "checkpoints/pipeline", mode="dir", caption="diffusers pipeline folder",
            placeholder="folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/",
        )  # fmt: skip
        self.controlnet_path = PathEdit(
            "checkpoints/controlnet", mode="dir", caption="ControlNet folder",
            placeholder="optional: a ControlNet conditioned on the layout",
        )  # fmt: skip
        self.lora_path = PathEdit(
            "checkpoints/lora", caption="LoRA weights", file_filter="LoRA weights (*.safetensors);;All files (*)",
            placeholder="optional: LoRA weights (.safetensors)",
        )  # fmt: skip

        self.device = QComboBox()
        self.device.addItems(self._devices())
        remembered = recall("checkpoints/device")
        if remembered and self.device.findText(remembered) >= 0:
            self.device.setCurrentText(remembered)
        self.device.currentTextChanged.connect(lambda t: remember("checkpoints/device", t))
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setCurrentText(recall("checkpoints/dtype", "float32") or "float32")
        self.precision.currentTextChanged.connect(lambda t: remember("checkpoints/dtype", t))

        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the checkpoints in a background thread")
        self.load_button.clicked.connect(self.load)

        self.info = QLabel(describe_html(None, "Image model"))
        self.info.setWordWrap(True)
        self.mask_info = QLabel(describe_html(None, "Mask model"))
        self.mask_info.setWordWrap(True)
        self.class_table = QTableWidget(0, 2)
        self.class_table.setHorizontalHeaderLabels(["label", "class"])
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.horizontalHeader().setStretchLastSection(True)
        self.class_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self._fit_class_table()

        self.diffinfinite_box = QWidget()
        own = QFormLayout(self.diffinfinite_box)
        own.setContentsMargins(0, 0, 0, 0)
        own.addRow("Image model", self.image_path)
        own.addRow("Mask model", self.mask_path)
        own.addRow("", self.use_mask)
        own.addRow("VAE folder", self.vae_path)
        self.diffusers_box = QWidget()
        theirs = QFormLayout(self.diffusers_box)
        theirs.setContentsMargins(0, 0, 0, 0)
        theirs.addRow("Pipeline", self.pipeline_path)
        theirs.addRow("ControlNet", self.controlnet_path)
        theirs.addRow("LoRA", self.lora_path)
        form = QFormLayout()
        form.addRow("Model family", self.family)
        form.addRow(self.diffinfinite_box)
        form.addRow(self.diffusers_box)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        loaded = QGroupBox("Loaded")
        loaded_layout = QVBoxLayout(loaded)
        loaded_layout.addWidget(self.info)
        loaded_layout.addWidget(self.class_table)
        loaded_layout.addWidget(self.mask_info)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(loaded)
        layout.addStretch(1)

        self.state.models_changed.connect(self._show_loaded)
        self.family.currentTextChanged.connect(self._show_family)
        self.family.setCurrentText(recall("checkpoints/family", FAMILIES[0]) or FAMILIES[0])
        self._show_family(self.family.currentText())
        self._show_loaded()

    def _show_family(self, family: str) -> None:
        remember("checkpoints/family", family)
        self.diffinfinite_box.setVisible(family == "DiffInfinite")
        self.diffusers_box.setVisible(family == "diffusers")

    @staticmethod
    def _devices() -> list[str]:
        try:
            from ..engine import available_devices

            return list(available_devices()) or ["cpu"]
        except Exception:  # the engine is unusable: say so when loading, not here
            return ["cpu"]

    # -- actions ----------------------------------------------------------------------
    def load(self) -> Any:
        """Load the chosen checkpoints in a worker thread; returns the worker."""
        if self.worker is not None:
            return self.worker
        if self.family.currentText() == "diffusers":
            return self._load_pipeline()
        self.load_button.setEnabled(False)
        self.load_button.setText("Loading…")
        self.worker = start_worker(
            load_checkpoints,
            model_path(self.image_path.value()),
            model_path(self.mask_path.value()),
            self.use_mask.isChecked(),
            self.vae_path.value() or None,
            self.device.currentText(),
            self.precision.currentText(),
            on_result=self._on_loaded,
            on_error=lambda exc: notify_error(exc, "Loading checkpoints failed"),
            on_finished=self._on_finished,
        )
        return self.worker

    def _load_pipeline(self) -> Any:
        if not self.pipeline_path.value():
            notify_error(CheckpointError("choose the diffusers pipeline folder first"), "Cannot load")
            return None
        self.load_button.setEnabled(False)
        self.load_button.setText("Loading…")
        self.worker = start_worker(
            load_pipeline, self.pipeline_path.value(), self.controlnet_path.value() or None,
            self.lora_path.value() or None, self.device.currentText(), self.precision.currentText(),
            on_result=self._on_loaded, on_error=lambda exc: notify_error(exc, "Loading the pipeline failed"),
            on_finished=self._on_finished,
        )  # fmt: skip
        return self.worker

    def _on_loaded(self, result: dict[str, Any]) -> None:
        state = self.state
        for key in ("image_model", "image_codec", "image_info", "mask_model", "mask_codec",
                    "mask_info", "device", "dtype"):  # fmt: skip
            setattr(state, key, result[key])
        state.models_changed.emit()
        info = result["image_info"] or {}
        show_info(f"Loaded {info.get('architecture', 'the image model')} "
                  f"({info.get('num_classes', '?')} classes)")  # fmt: skip

    def _on_finished(self) -> None:
        self.worker = None
        self.load_button.setEnabled(True)
        self.load_button.setText("Load")

    # -- display ----------------------------------------------------------------------
    def _show_loaded(self) -> None:
        state = self.state
        self.info.setText(describe_html(state.image_info, "Image model"))
        self.mask_info.setText(describe_html(state.mask_info, "Mask model"))
        info = state.image_info or {}
        names = list(info.get("class_names") or [])
        colors = list(info.get("class_colors") or [])
        self.class_table.setRowCount(len(names))
        for row, name in enumerate(names):
            label = QTableWidgetItem(str(row))
            label.setIcon(swatch_icon(class_rgb(colors, row)))
            self.class_table.setItem(row, 0, label)
            self.class_table.setItem(row, 1, QTableWidgetItem(str(name)))
        self.class_table.resizeColumnToContents(0)
        self._fit_class_table()

    def _fit_class_table(self) -> None:
        """Make the class table exactly as tall as its rows (up to :data:`TABLE_ROWS`), so a
        short dock scrolls instead of squeezing the table to one row."""
        table = self.class_table
        rows = min(max(table.rowCount(), 1), TABLE_ROWS)
        row_height = table.verticalHeader().defaultSectionSize()
        height = table.horizontalHeader().sizeHint().height() + rows * row_height + 2 * table.frameWidth()
        table.setMinimumHeight(height)
        table.setMaximumHeight(height)

    def shown_class_names(self) -> list[str]:
        """The class names listed in the table (what the user sees)."""
        return [self.class_table.item(r, 1).text() for r in range(self.class_table.rowCount())]
