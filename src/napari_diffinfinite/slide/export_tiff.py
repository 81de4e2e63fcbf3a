"""Pyramidal TIFF export: OME-TIFF for QuPath/Bio-Formats and a layout for OpenSlide.

All TIFF code of the project is here. Two layouts of the same pyramid (level k = 2**k
downsample, tiles of 512 x 512):

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
layouts, single-channel and always lossless, in ``<name>.labels.tif`` / ``.labels.ome.tif``
(:func:`labels_path`). Every TIFF we write has Software = ``napari-diffinfinite``, which is
how ``--overwrite`` recognises it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import ExportError
from ..progress import CancelToken, ProgressCallback, check
from .atomic import atomic_paths, check_target, make_temporary, remove_path
from .constants import SOFTWARE, SYNTHETIC_NOTE, TILE
from .export_common import (
    ExportProgress,
    ExportResult,
    check_region,
    export_provenance,
    export_warnings,
    label_source,
    open_source,
)
from .export_zarr import write_region_pyramid
from .pyramid import level_shapes, tile_count
from .store import SlideStore

__all__ = ["LAYOUTS", "COMPRESSIONS", "LABEL_SUFFIXES", "labels_path", "write_tiff_pyramid", "export_tiff"]

LAYOUTS = ("ome", "openslide")
COMPRESSIONS = ("jpeg", "zlib", "none")
LABEL_SUFFIXES = (".labels.ome.tif", ".labels.ome.tiff", ".labels.tif", ".labels.tiff")
"""Names of the label TIFFs we write (``a.ome.tif`` -> ``a.labels.ome.tif``)."""


def labels_path(out: str | os.PathLike) -> Path:
    """Where the label TIFF of a TIFF export goes: ``a.ome.tif`` -> ``a.labels.ome.tif``."""
    out = Path(out)
    name = out.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".labels" + name[-len(suffix) :])
    return out.with_name(name + ".labels.tif")


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
        metadata["MapAnnotation"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in annotations.items()}
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
        first: dict[str, Any] = {"software": SOFTWARE}
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


def _tiff_annotations(provenance: dict[str, Any], store: SlideStore) -> dict[str, Any]:
    notes = {k: v for k, v in provenance.items() if v is not None}
    notes.setdefault("class_names", list(store.class_names))
    return notes


def export_tiff(
    src: str | os.PathLike | SlideStore,
    out: str | os.PathLike,
    region: Sequence[int] | None = None,
    *,
    layout: str = "ome",
    compression: str = "jpeg",
    quality: int = 90,
    with_labels: bool = True,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Export ``region`` (or the whole slide) as a pyramidal TIFF and its label TIFF.

    ``layout="ome"``: OME-TIFF with SubIFD levels for QuPath/Bio-Formats;
    ``layout="openslide"``: top-level pages, which OpenSlide opens with every level.
    ``compression`` is ``"jpeg"`` (``quality`` 1..100), ``"zlib"`` (lossless) or
    ``"none"``; labels are always zlib. The label pyramid goes to :func:`labels_path`.
    A region is first rebuilt as a temporary pyramid next to the output (removed
    afterwards); the whole slide is read straight from the store's levels.
    """
    if layout not in LAYOUTS:
        raise ExportError(f"unknown TIFF layout {layout!r}; use one of {LAYOUTS}")
    if compression not in COMPRESSIONS:
        raise ExportError(f"unknown TIFF compression {compression!r}; use one of {COMPRESSIONS}")
    if compression == "jpeg" and not 1 <= int(quality) <= 100:
        raise ExportError(f"JPEG quality must be 1..100, got {quality}")
    store = open_source(src)
    box = check_region(region, store.shape)
    target = check_target(out, overwrite=overwrite)
    label_src = label_source(store) if with_labels else None
    has_labels = label_src is not None
    targets = [target] + ([check_target(labels_path(target), overwrite=overwrite)] if has_labels else [])
    shapes = level_shapes((box[3], box[2]), TILE)
    # The store's own levels are the export's pyramid only if our store wrote them (a
    # foreign OME-Zarr may have other level sizes or another downsampling): else rebuild.
    whole = (
        box == (0, 0, store.shape[1], store.shape[0])
        and store.level_shapes == shapes
        and store.provenance.get("software") == SOFTWARE
    )
    per_pyramid = tile_count(shapes)
    total = per_pyramid * ((0 if whole else 1) + (2 if has_labels else 1))
    fmt = "ome-tiff" if layout == "ome" else "tiff"
    counter = ExportProgress(progress, total, f"writing {fmt}")
    provenance = export_provenance(store, fmt, box)
    name = f"{store.path.name.removesuffix('.zarr')}"
    staging: Path | None = None
    with atomic_paths(targets, overwrite=overwrite) as temporaries:
        try:
            if whole:
                images = [store.image_level(k) for k in range(store.num_levels)]
                labels = [store.label_level(k) for k in range(store.num_levels)] if has_labels else None
            else:
                staging = make_temporary(target, directory=True)
                counter.message = "building the region's pyramid"
                _, images, labels = write_region_pyramid(
                    store,
                    staging,
                    box,
                    zarr_format=2,
                    fast=True,
                    with_labels=has_labels,
                    on_chunk=counter.step,
                    cancel=cancel,
                )
            counter.message = f"writing {target.name}"
            write_tiff_pyramid(
                temporaries[0],
                images,
                layout=layout,
                compression=compression,
                quality=quality,
                pixel_size_um=store.pixel_size_um,
                name=name,
                description=SYNTHETIC_NOTE if provenance.get("synthetic") else None,
                annotations=_tiff_annotations(provenance, store),
                on_tile=counter.step,
                cancel=cancel,
            )
            if has_labels and labels is not None:
                counter.message = "writing the label TIFF"
                classes = {str(i): n for i, n in enumerate(store.class_names)}
                write_tiff_pyramid(
                    temporaries[1],
                    labels,
                    layout=layout,
                    compression="zlib",
                    pixel_size_um=store.pixel_size_um,
                    name=f"{name} labels",
                    description="Tissue class per pixel (0 = unknown); classes: " + json.dumps(classes),
                    annotations={"classes": classes, "class_colors": [list(c) for c in store.class_colors]},
                    on_tile=counter.step,
                    cancel=cancel,
                )
        finally:
            if staging is not None:
                remove_path(staging)
    return ExportResult(
        path=target,
        format=fmt,
        region=box,
        files=targets,
        num_levels=len(shapes),
        warnings=export_warnings(store, has_labels),
    )
