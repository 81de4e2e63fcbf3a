"""The one state object the DiffInfinite dock widgets share, one per viewer.

Widgets stay thin: they read and write this object and call the engine. Loading a
checkpoint in the Checkpoint widget, for example, makes the Mask canvas widget show the
model's classes through :attr:`DiffInfiniteState.models_changed`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

#: class names/colours used before a checkpoint is loaded
_FALLBACK_CLASSES = 5


def unwrap(obj: Any) -> Any:
    """The real object behind napari's ``PublicOnlyProxy`` (plugins receive proxies).

    Proxies are created per attribute access, so they cannot serve as dictionary keys or
    weak references; the state keeps the real viewer and layers.
    """
    return getattr(obj, "__wrapped__", obj)


class DiffInfiniteState:
    """Models, codec, device, the mask canvas and the current slide store of one viewer."""

    #: the loaded models (or codecs, device, dtype) changed
    models_changed = Signal()
    #: the mask canvas layer or the slide size changed
    canvas_changed = Signal()
    #: the current slide store changed (emits its path, or None)
    store_changed = Signal(object)

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(unwrap(viewer))
        self.image_model: Any = None
        self.mask_model: Any = None
        self.image_codec: Any = None
        self.mask_codec: Any = None
        self.image_info: dict | None = None
        self.mask_info: dict | None = None
        self.device: str = "cpu"
        self.dtype: str = "float32"
        self.slide_shape: tuple[int, int] | None = None
        self._canvas_layer: weakref.ReferenceType[Labels] | None = None
        self.store_path: Path | None = None
        self._canvas_origin: tuple[int, dict] | None = None  # (checksum, provenance) of a sampled canvas

    # -- viewer -----------------------------------------------------------------------
    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    # -- classes ----------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names of the image model, label 0 = unknown (fallback: numbered)."""
        info = self.image_info or {}
        names = info.get("class_names")
        if names:
            return [str(n) for n in names]
        return ["unknown"] + [f"class {k}" for k in range(1, _FALLBACK_CLASSES)]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """(r, g, b) 0..255 per label of the image model (fallback: napari-like colours)."""
        info = self.image_info or {}
        colors = info.get("class_colors")
        if colors:
            return [class_rgb(colors, k) for k in range(len(colors))]
        fallback = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)]
        return fallback[: len(self.class_names)]

    @property
    def pixel_size_um(self) -> float | None:
        """Slide pixel size of the image model in µm (None when the model does not say)."""
        value = (self.image_info or {}).get("pixel_size_um")
        return float(value) if value else None

    # -- canvas -----------------------------------------------------------------------
    @property
    def canvas_layer(self) -> Labels | None:
        """The painted mask canvas, if it is still in the viewer."""
        layer = self._canvas_layer() if self._canvas_layer is not None else None
        viewer = self.viewer
        if layer is None or viewer is None or layer not in viewer.layers:
            return None
        return layer

    @canvas_layer.setter
    def canvas_layer(self, layer: Labels | None) -> None:
        self._canvas_layer = weakref.ref(unwrap(layer)) if layer is not None else None
        self.canvas_changed.emit()

    def set_canvas_origin(self, canvas: np.ndarray | None, info: dict | None) -> None:
        """Remember where ``canvas`` came from (e.g. a mask model's sampling), for the slide's provenance."""
        self._canvas_origin = None if canvas is None or info is None else (_checksum(canvas), dict(info))

    def canvas_info(self, canvas: np.ndarray) -> dict:
        """The provenance of ``canvas``: as sampled if it is unchanged since, else a canvas painted over it."""
        if self._canvas_origin is None:
            return {"type": "canvas"}
        checksum, info = self._canvas_origin
        return dict(info) if checksum == _checksum(canvas) else {"type": "canvas", "painted_over": dict(info)}

    def mask_source(self) -> Any:
        """The mask the engine samples from: a frozen copy of the canvas over the slide.

        Copied so that painting while a generation runs does not change that generation.
        """
        from ..slide.masks import CanvasMask

        layer = self.canvas_layer
        if layer is None or self.slide_shape is None:
            from ..errors import MaskError

            raise MaskError("no mask canvas: create one in the Mask canvas widget first")
        canvas = np.array(layer.data, dtype=np.uint8, copy=True)
        return CanvasMask(canvas, shape=tuple(self.slide_shape))

    def require_image_model(self) -> Any:
        """The loaded image model, or an error that says how to load one."""
        if self.image_model is None:
            from ..errors import CheckpointError

            raise CheckpointError("no image model loaded: load one in the Checkpoints widget")
        return self.image_model

    def set_store(self, path: str | Path | None) -> None:
        self.store_path = Path(path) if path is not None else None
        self.store_changed.emit(self.store_path)


_STATES: weakref.WeakKeyDictionary[Any, DiffInfiniteState] = weakref.WeakKeyDictionary()


def get_state(viewer: napari.Viewer) -> DiffInfiniteState:
    """The shared state of ``viewer`` (created on first use)."""
    viewer = unwrap(viewer)
    state = _STATES.get(viewer)
    if state is None:
        state = DiffInfiniteState(viewer)
        _STATES[viewer] = state
    return state


def class_rgb(colors: Sequence[Sequence[float]], label: int) -> tuple[int, int, int]:
    """The 0..255 (r, g, b) of ``label`` in ``colors`` (grey when out of range)."""
    if 0 <= label < len(colors):
        raw = list(colors[label][:3])
        values = [float(v) for v in raw]
        if all(isinstance(v, (float, np.floating)) and v <= 1.0 for v in raw):
            values = [v * 255 for v in values]
        return tuple(int(round(v)) for v in values)  # type: ignore[return-value]
    return (128, 128, 128)


def _checksum(canvas: np.ndarray) -> int:
    """A fast checksum of a label canvas (CRC-32 of its bytes and shape: 67 MB in about 50 ms)."""
    import zlib

    data = np.ascontiguousarray(canvas, dtype=np.uint8)
    return zlib.crc32(data.data, zlib.crc32(repr(data.shape).encode()))
