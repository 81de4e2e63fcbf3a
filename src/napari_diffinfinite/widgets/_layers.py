"""Turning slide stores and checkpoint classes into napari layers (no Qt here).

Used by the reader, the sample data and the Generate widget alike, so that a slide looks
the same however it was opened.

Why a wrapper instead of ``dask.array.from_zarr``: napari keeps a global dask chunk cache,
and a dask-backed layer keeps showing the stale (empty) chunks it read before the engine
wrote them, even after ``refresh()``. :class:`ChannelLastArray` hands napari the zarr array
itself, transposed lazily from the store's (c, y, x) to napari's RGB (y, x, c); every read
goes to the store, so ``layer.refresh()`` shows freshly written tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._geometry import slide_translation, world_scale, world_units

#: colour of label 0 ("unknown"/unlabelled): transparent, so the slide shows through
_TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


class ChannelLastArray:
    """A lazy (y, x, c) view of a (c, y, x) array (zarr or numpy).

    Supports what napari's slicing uses: ``shape``, ``dtype``, ``ndim``, ``size``, basic
    indexing with integers, slices and ``Ellipsis``, and ``np.asarray``. Only the indexed
    region is read from the underlying array.
    """

    def __init__(self, array: Any) -> None:
        if len(array.shape) != 3:
            raise ValueError(f"expected a (c, y, x) array, got shape {tuple(array.shape)}")
        self.array = array
        c, h, w = (int(n) for n in array.shape)
        self.shape: tuple[int, int, int] = (h, w, c)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChannelLastArray(shape={self.shape}, dtype={self.dtype})"

    def _normalise(self, key: Any) -> tuple[Any, Any, Any]:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-d array: {key!r}")
        key = key + (slice(None),) * (3 - len(key))
        return key  # type: ignore[return-value]

    def __getitem__(self, key: Any) -> np.ndarray:
        y, x, c = self._normalise(key)
        basic = all(isinstance(k, (slice, int, np.integer)) for k in (y, x, c))
        if basic:
            out = np.asarray(self.array[c, y, x])
            keeps_channel = not isinstance(c, (int, np.integer))
        else:  # fancy indexing (rare in napari): read the bounding rows/cols, index in memory
            out = np.asarray(
                self.array[:, y if isinstance(y, slice) else slice(None), x if isinstance(x, slice) else slice(None)]
            )
            out = np.moveaxis(out, 0, -1)
            ky = slice(None) if isinstance(y, slice) else y
            kx = slice(None) if isinstance(x, slice) else x
            return out[ky, kx, c]
        if keeps_channel and out.ndim >= 1:
            out = np.moveaxis(out, 0, -1)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def rgb_float(color: Sequence[float]) -> tuple[float, float, float, float]:
    """An (r, g, b[, a]) colour in 0..255 or 0..1 as an RGBA tuple in 0..1."""
    raw = list(color)
    values = [float(v) for v in raw]
    if not all(isinstance(v, (float, np.floating)) and v <= 1.0 for v in raw):
        values = [v / 255.0 for v in values]
    if len(values) == 3:
        values.append(1.0)
    return tuple(values[:4])  # type: ignore[return-value]


def label_colormap(class_colors: Sequence[Sequence[float]] | None) -> Any:
    """A napari colormap giving each class its checkpoint colour; label 0 is transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, tuple[float, ...]] = {None: (0.5, 0.5, 0.5, 1.0), 0: _TRANSPARENT}
    for label, color in enumerate(class_colors or []):
        if label == 0:
            continue
        colors[label] = rgb_float(color)
    return DirectLabelColormap(color_dict=colors)


def label_features(class_names: Sequence[str] | None) -> dict[str, list] | None:
    """Features table (``index`` -> ``class``) so napari's status bar names the class."""
    if not class_names:
        return None
    return {"index": list(range(len(class_names))), "class": [str(n) for n in class_names]}


def placement(store: Any) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` of a store's level 0 in napari's world.

    The world is in micrometres when the pixel size is known (see :mod:`._geometry`), so
    slides of different pixel sizes overlay at their true size; an exported region sits
    at its place over its source (NGFF translation, else the region in its provenance).
    """
    from .._reader import root_attributes

    px = getattr(store, "pixel_size_um", None)
    path = Path(str(getattr(store, "path", "") or ""))
    attrs = (root_attributes(path) or {}) if path.name else {}
    provenance = dict(getattr(store, "provenance", {}) or {})
    s = world_scale(px)
    placed: dict[str, Any] = {
        "scale": (s, s),
        "translate": slide_translation(attrs, provenance, px),
    }
    units = world_units(px)
    if units is not None:
        placed["units"] = units
    return placed


def slide_layer_data(store: Any, name: str | None = None) -> list[tuple[Any, dict, str]]:
    """Layer data tuples for a slide store: the RGB pyramid and, if present, its labels.

    The image is multiscale and lazy (:class:`ChannelLastArray` per level); the labels
    pyramid is a read-only multiscale Labels layer with the store's class colours. Both
    carry the store path and the provenance in ``metadata``, and are placed in µm
    (:func:`placement`).
    """
    path = Path(str(getattr(store, "path", "") or ""))
    stem = name or (path.stem if path.name else "slide")
    provenance = dict(getattr(store, "provenance", {}) or {})
    metadata = {
        "store_path": str(path),
        "provenance": provenance,
        "pixel_size_um": getattr(store, "pixel_size_um", None),
        "synthetic": bool(provenance.get("synthetic", True)),
    }
    placed = placement(store)
    levels = [ChannelLastArray(store.image_level(k)) for k in range(store.num_levels)]
    image_kwargs = {
        "name": stem,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": [0, 255],
        "metadata": metadata,
        "cache": False,
        **placed,
    }
    layers: list[tuple[Any, dict, str]] = [(levels if len(levels) > 1 else levels[0], image_kwargs, "image")]
    labels = _label_levels(store)
    if labels:
        label_kwargs = {
            "name": f"{stem} labels",
            "multiscale": len(labels) > 1,
            "opacity": 0.4,
            "metadata": dict(metadata),
            "colormap": label_colormap(getattr(store, "class_colors", None)),
            "cache": False,
            **placed,
        }
        features = label_features(getattr(store, "class_names", None))
        if features is not None:
            label_kwargs["features"] = features
        layers.append((labels if len(labels) > 1 else labels[0], label_kwargs, "labels"))
    return layers


def _label_levels(store: Any) -> list[Any]:
    try:
        return [store.label_level(k) for k in range(store.num_levels)]
    except (KeyError, FileNotFoundError, LookupError, AttributeError):
        return []
    except Exception as exc:  # a store without labels raises its own StoreError
        from ..errors import StoreError

        if isinstance(exc, StoreError):
            return []
        raise


#: napari's layer-list thumbnails are 32 x 32 pixels
THUMBNAIL_SIDE = 32


def refresh_rgb_thumbnail(layer: Any) -> None:
    """Redraw the layer-list thumbnail of a multiscale RGB layer from its smallest level.

    napari's ``refresh()`` re-reads the displayed tiles of a multiscale layer but keeps
    the thumbnail it sliced when the layer was added (black, for a slide still being
    generated). The smallest level is at most one 512 x 512 chunk, so this is cheap.
    """
    if not getattr(layer, "multiscale", False):
        return
    level = layer.data[-1]
    h, w = int(level.shape[0]), int(level.shape[1])
    step = max(-(-h // THUMBNAIL_SIDE), -(-w // THUMBNAIL_SIDE), 1)
    rgb = np.asarray(level[::step, ::step])[..., :3]
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    layer.thumbnail = np.concatenate([rgb.astype(np.uint8), alpha], axis=-1)
