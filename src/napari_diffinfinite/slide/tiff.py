"""Tiled pyramid TIFF writers: OME-TIFF for QuPath/Bio-Formats and a layout for OpenSlide.

Two layouts of the same pyramid (level k = 2**k downsample, tiles of 512 x 512):

- ``"ome"``: OME-TIFF, BigTIFF. Level 0 is the one top-level page (OME-XML in its
  ImageDescription, physical pixel size, provenance as a MapAnnotation); levels 1.. are
  its SubIFDs (``NewSubfileType = 1``). This is what Bio-Formats, and so QuPath, reads
  as a pyramid.
- ``"openslide"``: a generic tiled TIFF, BigTIFF, every level a top-level page (levels
  1.. marked reduced-resolution). OpenSlide's generic-TIFF driver takes each tiled
  top-level page as a level; it ignores SubIFDs, so the OME layout opens as one level.
  The pixel size goes in XResolution/YResolution (pixels per centimetre), from which
  OpenSlide derives ``openslide.mpp-x``/``mpp-y``.

Tiles are read from the level arrays one at a time and handed to tifffile as an iterator,
so memory stays at a few tiles whatever the image size. Label images use the same
layouts, single-channel and always lossless.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import ExportError
from ..progress import CancelToken, check

__all__ = ["LAYOUTS", "COMPRESSIONS", "tile_count", "write_tiff_pyramid"]

LAYOUTS = ("ome", "openslide")
COMPRESSIONS = ("jpeg", "zlib", "none")
TILE = 512


def tile_count(shapes: Sequence[tuple[int, int]], tile: int = TILE) -> int:
    """Number of tiles in all levels of ``shapes`` ((h, w) per level)."""
    return sum(-(-h // tile) * -(-w // tile) for h, w in shapes)


def _level_shape(level: Any) -> tuple[int, int]:
    return (int(level.shape[-2]), int(level.shape[-1]))


def _tiles(
    level: Any,
    tile: int,
    rgb: bool,
    on_tile: Callable[[], None] | None,
    cancel: CancelToken | None,
) -> Iterator[np.ndarray]:
    """Full-size tiles of a (3, h, w) or (h, w) array in row-major order.

    Edge tiles are padded by repeating the last row/column (not zeros), so that JPEG
    blocks straddling the image edge do not ring against a black border.
    """
    h, w = _level_shape(level)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            check(cancel)
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            if rgb:
                block = np.moveaxis(np.asarray(level[:, y0:y1, x0:x1], dtype=np.uint8), 0, -1)
                pad = ((0, tile - (y1 - y0)), (0, tile - (x1 - x0)), (0, 0))
            else:
                block = np.asarray(level[y0:y1, x0:x1], dtype=np.uint8)
                pad = ((0, tile - (y1 - y0)), (0, tile - (x1 - x0)))
            if block.shape[:2] != (tile, tile):
                block = np.pad(block, pad, mode="edge")
            # Report before yielding: tifffile never resumes after a page's last tile.
            if on_tile is not None:
                on_tile()
            yield np.ascontiguousarray(block)


def _compression_args(compression: str, quality: int, rgb: bool) -> dict[str, Any]:
    if compression not in COMPRESSIONS:
        raise ExportError(f"unknown TIFF compression {compression!r}; use one of {COMPRESSIONS}")
    if compression == "jpeg":
        if not rgb:
            raise ExportError("JPEG would blur label boundaries; labels are written lossless")
        if not 1 <= quality <= 100:
            raise ExportError(f"JPEG quality must be 1..100, got {quality}")
        return {"compression": "jpeg", "compressionargs": {"level": int(quality)}}
    if compression == "zlib":
        # Horizontal differencing shrinks smooth RGB a lot; it is useless for labels.
        return {
            "compression": "zlib",
            "compressionargs": {"level": 6},
            "predictor": rgb,
        }
    return {"compression": None}


def _ome_metadata(
    rgb: bool,
    pixel_size_um: float | None,
    name: str | None,
    description: str | None,
    annotations: dict[str, Any] | None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": "YXS" if rgb else "YX"}
    if name:
        metadata["Name"] = name
    if description:
        metadata["Description"] = description
    if pixel_size_um is not None:
        metadata.update(
            PhysicalSizeX=float(pixel_size_um),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(pixel_size_um),
            PhysicalSizeYUnit="µm",
        )
    if annotations:
        metadata["MapAnnotation"] = {
            str(k): v if isinstance(v, str) else json.dumps(v) for k, v in annotations.items()
        }
    return metadata


def write_tiff_pyramid(
    path: str | Path,
    levels: Sequence[Any],
    *,
    layout: str = "ome",
    compression: str = "jpeg",
    quality: int = 90,
    pixel_size_um: float | None = None,
    name: str | None = None,
    description: str | None = None,
    annotations: dict[str, Any] | None = None,
    tile: int = TILE,
    on_tile: Callable[[], None] | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Write a tiled pyramid TIFF at ``path`` from pre-computed pyramid levels.

    ``levels`` are array-likes indexable by slices, level 0 first, each (3, h, w) uint8
    RGB or (h, w) uint8 labels (e.g. zarr arrays of a slide store); level k should be
    the 2**k downsample of level 0. ``layout`` is ``"ome"`` (SubIFDs, for QuPath) or
    ``"openslide"`` (top-level pages). ``on_tile`` is called after every tile is
    handed over and ``cancel`` checked before, so the caller can report progress and
    stop the write (the caller removes the partial file). ``path`` is written in place:
    pass a temporary name (see :mod:`.atomic`).
    """
    if layout not in LAYOUTS:
        raise ExportError(f"unknown TIFF layout {layout!r}; use one of {LAYOUTS}")
    if not levels:
        raise ExportError("nothing to write: no pyramid levels")
    if tile % 16:
        raise ExportError(f"TIFF tiles must be a multiple of 16 px, got {tile}")
    rgb = len(levels[0].shape) == 3
    options: dict[str, Any] = {
        "photometric": "rgb" if rgb else "minisblack",
        "tile": (tile, tile),
        "dtype": np.uint8,
        # Bound tifffile's read-ahead to a few tiles: memory must not grow with the slide.
        "maxworkers": 1,
        "buffersize": 4 * tile * tile * (3 if rgb else 1),
        **_compression_args(compression, quality, rgb),
    }
    if pixel_size_um is not None:
        options["resolutionunit"] = "CENTIMETER"
    ome = layout == "ome"
    shapes = [_level_shape(level) for level in levels]

    def resolution(k: int) -> dict[str, Any]:
        if pixel_size_um is None:
            return {}
        per_cm = 1e4 / (float(pixel_size_um) * 2**k)
        return {"resolution": (per_cm, per_cm)}

    def shape_of(k: int) -> tuple[int, ...]:
        return (*shapes[k], 3) if rgb else shapes[k]

    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tif:
        first: dict[str, Any] = {"software": "napari-diffinfinite"}
        if ome:
            first["metadata"] = _ome_metadata(rgb, pixel_size_um, name, description, annotations)
            first["subifds"] = len(levels) - 1
        else:
            first["metadata"] = None
            text = description or ""
            if annotations:
                text = (text + "\n" if text else "") + json.dumps(annotations, sort_keys=True)
            if text:
                first["description"] = text
        tif.write(
            _tiles(levels[0], tile, rgb, on_tile, cancel),
            shape=shape_of(0),
            **resolution(0),
            **first,
            **options,
        )
        for k in range(1, len(levels)):
            tif.write(
                _tiles(levels[k], tile, rgb, on_tile, cancel),
                shape=shape_of(k),
                subfiletype=1,
                metadata=None,
                **resolution(k),
                **options,
            )
