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


class DamagedChunks:
    """Reads a zarr array so that a chunk that cannot be decoded shows as zeros, not an error.

    A store damaged on disk or in transfer (a chunk file truncated or overwritten) raised the
    codec's own error ("error during blosc decompression: -1") inside napari's slicing,
    halfway through adding the layer, which left a layer drawn but missing from the layer
    list. Here the first failing read is retried chunk by chunk; what cannot be decoded is
    filled with zeros (black, or "unknown" for labels) and ``warn`` is called once per array
    with one message that names the store, the level and how many chunks are damaged.
    """

    def __init__(self, array: Any, what: str, warn: Any = None) -> None:
        self.array = array
        self.what = what
        self.warn = warn if warn is not None else _show_warning
        self.damaged: set[tuple[int, ...]] = set()
        self._warned = False

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        """``array[key]`` for a tuple of ints and slices, one per axis."""
        try:
            return np.asarray(self.array[key])
        except (IndexError, TypeError):
            raise
        except Exception:  # noqa: BLE001 - a codec's decode error, of whatever type it raises
            return self._read_by_chunk(key)

    def _read_by_chunk(self, key: tuple[Any, ...]) -> np.ndarray:
        ranges = [
            k.indices(n) if isinstance(k, slice) else (int(k), int(k) + 1, 1) for k, n in zip(key, self.array.shape)
        ]
        lo = [r[0] if r[2] > 0 else r[1] + 1 for r in ranges]
        hi = [r[1] if r[2] > 0 else r[0] + 1 for r in ranges]
        box = np.zeros([max(0, b - a) for a, b in zip(lo, hi)], dtype=self.array.dtype)
        chunks = tuple(int(c) for c in self.array.chunks)
        first = [a // c for a, c in zip(lo, chunks)]
        last = [-(-b // c) for b, c in zip(hi, chunks)]
        for index in np.ndindex(*[max(0, b - a) for a, b in zip(first, last)]):
            chunk = tuple(f + i for f, i in zip(first, index))
            region = tuple(slice(max(c * n, a), min((c + 1) * n, b)) for c, n, a, b in zip(chunk, chunks, lo, hi))
            try:
                values = np.asarray(self.array[region])
            except Exception:  # noqa: BLE001 - see read()
                self.damaged.add(chunk)
                continue
            box[tuple(slice(r.start - a, r.stop - a) for r, a in zip(region, lo))] = values
        if self.damaged and not self._warned:
            self._warned = True
            n = len(self.damaged)
            self.warn(
                f"{self.what} is damaged: {n} chunk{'s' if n != 1 else ''} cannot be decoded and "
                f"{'is' if n == 1 else 'are'} shown as zeros (black); regenerate or copy the store again"
            )
        inner = tuple(
            slice(r[0] - a, (r[1] - a) if r[1] - a >= 0 else None, r[2]) if isinstance(k, slice) else int(k) - a
            for k, r, a in zip(key, ranges, lo)
        )
        return box[inner]


def _show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


class LabelLevel:
    """A 2-D labels level whose damaged chunks read as 0 ("unknown"): see :class:`DamagedChunks`."""

    def __init__(self, array: Any, what: str) -> None:
        self.array = array
        self.reader = DamagedChunks(array, what)
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _full_key(key, self.ndim)
        if all(isinstance(k, (slice, int, np.integer)) for k in key):
            return self.reader.read(key)
        return np.asarray(self.reader.read((slice(None),) * self.ndim))[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def _full_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """``key`` as one entry per axis (Ellipsis expanded, missing trailing axes as slices)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - (len(key) - 1)) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a {ndim}-d array: {key!r}")
    return key + (slice(None),) * (ndim - len(key))


class ChannelLastArray:
    """A lazy (y, x, c) view of a (c, y, x) array (zarr or numpy).

    Supports what napari's slicing uses: ``shape``, ``dtype``, ``ndim``, ``size``, basic
    indexing with integers, slices and ``Ellipsis``, and ``np.asarray``. Only the indexed
    region is read from the underlying array.
    """

    def __init__(self, array: Any, what: str = "the slide") -> None:
        if len(array.shape) != 3:
            raise ValueError(f"expected a (c, y, x) array, got shape {tuple(array.shape)}")
        self.array = array
        self.reader = DamagedChunks(array, what)
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

    def __getitem__(self, key: Any) -> np.ndarray:
        y, x, c = _full_key(key, 3)
        basic = all(isinstance(k, (slice, int, np.integer)) for k in (y, x, c))
        if basic:
            out = self.reader.read((c, y, x))
            keeps_channel = not isinstance(c, (int, np.integer))
        else:  # fancy indexing (rare in napari): read the bounding rows/cols, index in memory
            out = self.reader.read(
                (slice(None), y if isinstance(y, slice) else slice(None), x if isinstance(x, slice) else slice(None))
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
    levels = [
        ChannelLastArray(store.image_level(k), f"slide store {path} (level {k})") for k in range(store.num_levels)
    ]
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
    labels = [
        LabelLevel(level, f"slide store {path} (labels, level {k})") for k, level in enumerate(_label_levels(store))
    ]
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
