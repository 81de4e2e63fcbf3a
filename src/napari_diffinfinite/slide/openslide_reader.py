"""Real whole-slide images (SVS, NDPI, MRXS, generic tiled TIFF, ...) through OpenSlide.

A real slide opens lazily as a multiscale image: one array per pyramid level, each read
tile by tile with ``openslide.OpenSlide.read_region`` only when a viewer or a computation
touches it. This is what lets napari show a patient's slide next to a synthetic one, and
what :mod:`.tissue` reads to copy a real slide's tissue layout.

OpenSlide is an optional dependency (``pip install napari-diffinfinite[slides]``); it is
imported on first use so the rest of the engine works without it.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .constants import TILE

__all__ = [
    "OpenSlideLevel",
    "RealSlide",
    "open_real_slide",
    "is_real_slide",
    "real_slide_layer_data",
]

DEFAULT_CHUNK = TILE

OPENSLIDE_PIECE = 4096
"""OpenSlide's ``openslide_read_region`` paints a region in pieces of 4096 x 4096 level pixels,
each placed at level-0 position ``int(x + col * 4096 * downsample)``. A level whose downsample
is not an integer (a real scanner's 4.0003) cannot be placed at an integer level-0 position
for an arbitrary chunk: the chunk would land a fraction of a pixel off (resampled by cairo),
and every chunk by a different fraction, leaving seams. Such levels are therefore read piece
by piece exactly as one ``read_region`` of the whole level would read them."""

_PIECE_CACHE = 4  # pieces kept per slide (each at most 4096 x 4096 x 3 bytes)


def _openslide() -> Any:
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StoreError(
            "reading real slides needs OpenSlide: pip install 'napari-diffinfinite[slides]' "
            "(openslide-python and openslide-bin)"
        ) from exc
    return openslide


def _axis_range(key: Any, size: int) -> tuple[int, int, slice | int]:
    """Map an index along one axis to the contiguous range to read and a local index."""
    if isinstance(key, (int, np.integer)):
        index = int(key) + size if key < 0 else int(key)
        if not 0 <= index < size:
            raise IndexError(f"index {key} is out of bounds for an axis of size {size}")
        return index, index + 1, 0
    if not isinstance(key, slice):
        raise TypeError(f"slide levels support integers and slices, not {type(key).__name__}")
    indices = range(*key.indices(size))
    if len(indices) == 0:
        return 0, 0, slice(0, 0)
    lo, hi = min(indices[0], indices[-1]), max(indices[0], indices[-1]) + 1
    first = indices[0] - lo
    last = indices[-1] - lo
    step = indices.step
    stop = last + 1 if step > 0 else (last - 1 if last > 0 else None)
    return lo, hi, slice(first, stop, step)


class OpenSlideLevel:
    """One pyramid level of a real slide as a read-only (h, w, 3) uint8 array-like.

    Indexing with integers and slices reads only the addressed pixels. Transparent
    pixels (outside the scanned area) are composited onto the slide's background colour,
    as OpenSlide's own thumbnails do.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, slide: RealSlide, level: int) -> None:
        self._slide = slide
        self.level = level
        self.shape: tuple[int, int, int] = (*slide.level_shapes[level], 3)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of this level as (h, w, 3) uint8."""
        return self._slide.read_region(self.level, y0, y1, x0, x1)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = key.index(Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:at] + fill + key[at + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3:
            raise IndexError(f"too many indices for a slide level: {key}")
        y0, y1, ly = _axis_range(key[0], self.shape[0])
        x0, x1, lx = _axis_range(key[1], self.shape[1])
        block = self.read(y0, y1, x0, x1)
        return block[ly, lx, key[2]]


@dataclass
class RealSlide:
    """A real whole-slide image opened with OpenSlide.

    ``level_shapes`` are (height, width) per level, ``downsamples`` the level-0 pixels per
    level pixel, ``pixel_size_um`` the level-0 pixel size (microns, from
    ``openslide.mpp-x``/``mpp-y``; None when the file does not say).
    """

    path: Path
    vendor: str | None
    level_shapes: list[tuple[int, int]]
    downsamples: list[float]
    pixel_size_um: tuple[float, float] | None
    properties: dict[str, str]
    background: tuple[int, int, int] = (255, 255, 255)
    _handle: Any = field(default=None, repr=False)
    _pieces: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _pieces_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (height, width)."""
        return self.level_shapes[0]

    @property
    def num_levels(self) -> int:
        return len(self.level_shapes)

    def level(self, k: int) -> OpenSlideLevel:
        """Level ``k`` as a lazy array-like (h, w, 3) uint8."""
        if not 0 <= k < self.num_levels:
            raise IndexError(f"level {k} does not exist; the slide has {self.num_levels}")
        return OpenSlideLevel(self, k)

    def read_region(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of ``level`` (level coordinates) as (h, w, 3) uint8.

        A file OpenSlide opened but cannot decode (damaged tiles) raises :class:`StoreError`."""
        try:
            return self._read_region(level, y0, y1, x0, x1)
        except _openslide().OpenSlideError as exc:
            raise StoreError(
                f"OpenSlide cannot read level {level} y {y0}:{y1}, x {x0}:{x1} of {self.path}: {str(exc)[:200]}; "
                "the file is damaged or truncated"
            ) from None

    def _read_region(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)
        ds = self.downsamples[level]
        if float(ds).is_integer():
            # Level pixel (y0, x0) is exactly level-0 pixel (y0 * ds, x0 * ds).
            rgba = np.asarray(self._handle.read_region((int(x0 * ds), int(y0 * ds)), level, (w, h)))
            return self._composite(rgba)
        out = np.empty((h, w, 3), np.uint8)
        p = OPENSLIDE_PIECE
        for row in range(y0 // p, (y1 - 1) // p + 1):
            for col in range(x0 // p, (x1 - 1) // p + 1):
                py, px = row * p, col * p
                ya, yb = max(y0, py), min(y1, py + p)
                xa, xb = max(x0, px), min(x1, px + p)
                piece = self._piece(level, row, col, yb - py, xb - px)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = piece[ya - py : yb - py, xa - px : xb - px]
        return out

    def _piece(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray:
        """At least the top-left (h, w) of piece (row, col) of ``level``, as OpenSlide paints it.

        The piece is read from its own origin (so its pixels are those of a whole-level read)
        and kept in a small cache, since neighbouring chunks of a piece are read together.
        """
        key = (level, row, col)
        with self._pieces_lock:
            cached = self._pieces.get(key)
            if cached is not None and cached.shape[0] >= h and cached.shape[1] >= w:
                self._pieces.move_to_end(key)
                return cached
        ds = self.downsamples[level]
        p = OPENSLIDE_PIECE
        if cached is not None:  # read the larger extent once
            h, w = max(h, cached.shape[0]), max(w, cached.shape[1])
        # openslide.c: sx = x + col * d * ds, truncated to an integer, for a read from x = 0.
        location = (math.trunc(col * p * ds), math.trunc(row * p * ds))
        piece = self._composite(np.asarray(self._handle.read_region(location, level, (w, h))))
        with self._pieces_lock:
            self._pieces[key] = piece
            self._pieces.move_to_end(key)
            while len(self._pieces) > _PIECE_CACHE:
                self._pieces.popitem(last=False)
        return piece

    def _composite(self, rgba: np.ndarray) -> np.ndarray:
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha[..., None].astype(np.uint16)
        bg = np.asarray(self.background, np.uint16)
        out = (rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255
        return out.astype(np.uint8)

    def dask_levels(self, chunk: int = DEFAULT_CHUNK) -> list:
        """All levels as dask arrays (h, w, 3) with (chunk, chunk, 3) chunks, read lazily."""
        import dask.array as da

        key = self.properties.get("openslide.quickhash-1") or str(self.path)
        levels = []
        for k in range(self.num_levels):
            levels.append(
                da.from_array(
                    self.level(k),
                    chunks=(chunk, chunk, 3),
                    asarray=False,
                    fancy=False,
                    name=f"openslide-{key}-{k}-{chunk}",
                )
            )
        return levels

    def close(self) -> None:
        self._pieces.clear()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RealSlide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_real_slide(path: str | os.PathLike) -> bool:
    """True when OpenSlide recognises ``path`` as a slide it can open."""
    try:
        openslide = _openslide()
    except StoreError:
        return False
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return openslide.OpenSlide.detect_format(str(p)) is not None
    except Exception:
        return False


def _parse_background(value: str | None) -> tuple[int, int, int]:
    if value and len(value) == 6:
        try:
            return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            pass
    return (255, 255, 255)


def _pixel_size(props: dict[str, str]) -> tuple[float, float] | None:
    try:
        mpp_x = float(props["openslide.mpp-x"])
        mpp_y = float(props["openslide.mpp-y"])
    except (KeyError, ValueError):
        return None
    if mpp_x <= 0 or mpp_y <= 0:
        return None
    return (mpp_y, mpp_x)


def open_real_slide(path: str | os.PathLike) -> RealSlide:
    """Open a real whole-slide image with OpenSlide, lazily.

    Raises :class:`StoreError` with the reason when the file is missing or is not a
    slide OpenSlide supports (for MRXS, pass the ``.mrxs`` file next to its data folder).
    """
    openslide = _openslide()
    p = Path(path).expanduser()
    if not p.exists():
        raise StoreError(f"{p} does not exist")
    if p.is_dir():
        raise StoreError(
            f"{p} is a folder, not a slide file OpenSlide can read (SVS, NDPI, MRXS, "
            "tiled TIFF, ...); open a synthetic .zarr slide with SlideStore instead"
        )
    try:
        handle = openslide.OpenSlide(str(p))
    except openslide.OpenSlideError as exc:
        raise StoreError(
            f"OpenSlide cannot read {p}: {exc}. Supported: Aperio SVS, Hamamatsu NDPI/VMS, "
            "MIRAX MRXS, Leica SCN, Philips TIFF, Ventana, generic tiled TIFF, DICOM"
        ) from exc
    props = dict(handle.properties)
    return RealSlide(
        path=p,
        vendor=props.get("openslide.vendor"),
        level_shapes=[(int(h), int(w)) for (w, h) in handle.level_dimensions],
        downsamples=[float(d) for d in handle.level_downsamples],
        pixel_size_um=_pixel_size(props),
        properties=props,
        background=_parse_background(props.get("openslide.background-color")),
        _handle=handle,
    )


def real_slide_layer_data(
    path: str | os.PathLike, *, chunk: int = DEFAULT_CHUNK, physical_scale: bool = False
) -> list[tuple[list, dict, str]]:
    """napari layer data for a real slide: one multiscale RGB image layer.

    Meant for the plugin's reader contribution. Levels are dask arrays read on demand.
    With ``physical_scale`` the layer is scaled to microns (when the file gives a pixel
    size); by default it is in level-0 pixels, like synthetic slides.
    """
    slide = open_real_slide(path)
    meta: dict[str, Any] = {
        "name": slide.path.name,
        "rgb": True,
        "multiscale": True,
        "metadata": {
            "source": "openslide",
            "vendor": slide.vendor,
            "pixel_size_um": slide.pixel_size_um,
            "synthetic": False,
            "path": str(slide.path),
        },
    }
    if physical_scale and slide.pixel_size_um is not None:
        meta["scale"] = slide.pixel_size_um
        meta["units"] = ("µm", "µm")
    return [(slide.dask_levels(chunk), meta, "image")]
