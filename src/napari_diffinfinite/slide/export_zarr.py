"""Export a slide store, or a region of it, as OME-Zarr (NGFF 0.4 for QuPath, or 0.5).

The image and label pyramids of the region are rebuilt from its level-0 chunks by
:func:`.pyramid.build_region_pyramid` (level k = the 2**k block mean of the region, blocks
aligned to the region's corner); all metadata comes from :mod:`.ngff`: ``multiscales``,
``omero`` (Red/Green/Blue), ``bioformats2raw.layout: 3``, ``OME/METADATA.ome.xml`` with the
pixel size, ``image-label`` colours and class names, and the provenance with an ``export``
record. The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zarr
from zarr.storage import LocalStore

from ..errors import ExportError
from ..progress import CancelToken, ProgressCallback, check
from . import ngff
from .atomic import atomic_path, check_target
from .constants import LABEL_NAME, NGFF_VERSION, NGFF_VERSIONS, PROVENANCE_KEY, TILE
from .export_common import (
    ExportProgress,
    ExportResult,
    Region,
    check_region,
    export_provenance,
    export_warnings,
    label_source,
    open_source,
)
from .pyramid import build_region_pyramid, level_shapes, tile_count
from .store import SlideStore

__all__ = ["export_ome_zarr", "write_region_pyramid"]


def _zarr_format(version: str) -> int:
    if version not in NGFF_VERSIONS:
        raise ExportError(f"unsupported NGFF version {version!r}; use one of {NGFF_VERSIONS}")
    return 2 if version == "0.4" else 3


def write_region_pyramid(
    store: SlideStore,
    path: Path,
    region: Region,
    *,
    zarr_format: int,
    with_labels: bool,
    fast: bool = False,
    on_chunk: Callable[[], None] | None = None,
    cancel: CancelToken | None = None,
) -> tuple[zarr.Group, list[Any], list[Any] | None]:
    """Create the region's image (root) and label (``labels/tissue``) pyramids under ``path``.

    Returns the root group and the level arrays; no NGFF metadata is written (the TIFF export
    uses this as a staging area). ``fast`` trades compression for speed.
    """
    shapes = level_shapes((region[3], region[2]), TILE)
    root = zarr.open_group(store=LocalStore(path), mode="w", zarr_format=zarr_format)
    images = ngff.create_level_arrays(root, shapes, rgb=True, zarr_format=zarr_format, fast=fast)
    labels = None
    label_src = label_source(store) if with_labels else None
    if label_src is not None:
        group = root.create_group("labels").create_group(LABEL_NAME)
        labels = ngff.create_level_arrays(group, shapes, rgb=False, zarr_format=zarr_format, fast=fast)
    build_region_pyramid(
        store.image_level(0), label_src, region, images, labels, tile=TILE, on_chunk=on_chunk, cancel=cancel
    )
    return root, images, labels


def export_ome_zarr(
    src: str | os.PathLike | SlideStore,
    out: str | os.PathLike,
    region: Sequence[int] | None = None,
    *,
    ngff_version: str = NGFF_VERSION,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Export the image and label pyramids of ``region`` (or the whole slide) as OME-Zarr.

    NGFF 0.4 (zarr format 2) by default, which QuPath 0.6 reads; ``ngff_version="0.5"``
    writes zarr format 3. Level k equals ``downsample_image(region, 2**k)``.
    """
    version = str(ngff_version)
    zarr_format = _zarr_format(version)
    store = open_source(src)
    box = check_region(region, store.shape)
    target = check_target(out, overwrite=overwrite)
    shapes = level_shapes((box[3], box[2]), TILE)
    has_labels = label_source(store) is not None
    counter = ExportProgress(progress, tile_count(shapes), "writing OME-Zarr")
    name = f"{store.path.name.removesuffix('.zarr')} region x{box[0]} y{box[1]} {box[2]}x{box[3]}"
    with atomic_path(target, directory=True, overwrite=overwrite) as tmp:
        root, _, _ = write_region_pyramid(
            store, tmp, box, zarr_format=zarr_format, with_labels=True, on_chunk=counter.step, cancel=cancel
        )
        check(cancel)
        if has_labels:
            ngff.write_label_metadata(
                root, version=version, num_levels=len(shapes), pixel_size_um=store.pixel_size_um,
                class_names=store.class_names, class_colors=store.class_colors, origin=(box[1], box[0]),
            )  # fmt: skip
        ngff.write_ome_xml(root, tmp, version=version, name=name, shape=shapes[0], pixel_size_um=store.pixel_size_um)
        # Root metadata last: a reader that sees "multiscales" finds every array in place.
        ngff.write_image_metadata(
            root, version=version, name=name, num_levels=len(shapes), pixel_size_um=store.pixel_size_um,
            extra={PROVENANCE_KEY: export_provenance(store, f"ome-zarr {version}", box)}, origin=(box[1], box[0]),
        )  # fmt: skip
    return ExportResult(
        path=target,
        format="ome-zarr",
        region=box,
        files=[target],
        num_levels=len(shapes),
        warnings=export_warnings(store, has_labels),
    )
