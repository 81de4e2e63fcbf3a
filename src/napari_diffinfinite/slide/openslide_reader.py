"""Real whole-slide images (SVS, NDPI, MRXS, generic tiled TIFF, ...) through OpenSlide.

A real slide opens lazily as a multiscale image: one array per pyramid level, each read
tile by tile with ``openslide.OpenSlide.read_region`` only when a viewer or a computation
touches it. This is what lets napari show a patient's slide next to a synthetic one, and
what :mod:`.tissue` reads to copy a real slide's tissue layout.

OpenSlide is an optional dependency (``pip install napari-diffinfinite[slides]``); it is
imported on first use so the rest of the engine works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError

__all__ = [
    "OpenSlideLevel",
    "RealSlide",
    "open_real_slide",
    "is_real_slide",
    "real_slide_layer_data",
]

DEFAULT_CHUNK = 512


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
        """Pixels [y0:y1, x0:x1] of ``level`` (level coordinates) as (h, w, 3) uint8."""
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)
        ds = self.downsamples[level]
        # OpenSlide places regions by level-0 coordinates; its own tilers truncate too.
        location = (int(x0 * ds), int(y0 * ds))
        rgba = np.asarray(self._handle.read_region(location, level, (w, h)))
        return self._composite(rgba)

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
