"""The napari dock widgets of napari-diffinfinite.

One module per widget plus one shared state object per viewer (:mod:`._state`):

- :class:`DiffInfinitePanel` holds the four steps below as tabs of one dock;

- :class:`CheckpointWidget` loads the image model, the mask model and the VAE;
- :class:`MaskCanvasWidget` creates and fills the paintable label canvas over the slide;
- :class:`GenerateWidget` runs the engine with progress, preview, Cancel and Resume;
- :class:`ExportWidget` exports a region or the whole slide.

Widgets are imported lazily so that ``import napari_diffinfinite.widgets`` stays cheap
and Qt-free until a widget is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffInfinitePanel", "CheckpointWidget", "MaskCanvasWidget", "GenerateWidget", "ExportWidget"]

_MODULES = {
    "DiffInfinitePanel": "._panel",
    "CheckpointWidget": "._checkpoint",
    "MaskCanvasWidget": "._canvas",
    "GenerateWidget": "._generate",
    "ExportWidget": "._export",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        from importlib import import_module

        return getattr(import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
