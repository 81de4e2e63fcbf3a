"""Export a slide store, or a region of it: one entry point over the format modules.

Formats (:data:`FORMATS`):

- ``"ome-zarr"`` (:mod:`.export_zarr`): image and label pyramids of the region, NGFF 0.4
  (zarr format 2, what QuPath 0.6 reads) or 0.5 (zarr format 3), with ``OME/METADATA.ome.xml``
  and ``bioformats2raw.layout`` for QuPath, physical pixel size, image-label colours and class
  names, and the provenance.
- ``"ome-tiff"`` (:mod:`.export_tiff`): pyramidal OME-TIFF, levels as SubIFDs (QuPath through
  Bio-Formats), plus the label pyramid in ``<name>.labels.ome.tif``.
- ``"tiff"`` (:mod:`.export_tiff`): generic tiled TIFF with every level a top-level page,
  which OpenSlide opens with all its levels, plus ``<name>.labels.tif``.
- ``"geojson"`` (:mod:`.geojson`): the labels as QuPath annotations.

A region is ``(x, y, w, h)`` in level-0 pixels and need not be aligned to chunks. Level k
of an exported region is ``pyramid.downsample_image(region_level_0, 2**k)``, rebuilt from
the region's level-0 tiles by :func:`.pyramid.build_region_pyramid`. Everything streams chunk
by chunk, so memory does not grow with the slide. Outputs are written under a hidden
temporary name and renamed when complete (:mod:`.atomic`); on any error or cancellation
nothing is left under the target name, and ``overwrite`` replaces only an export of ours.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import ExportError
from ..progress import CancelToken, ProgressCallback
from .constants import NGFF_VERSION, NGFF_VERSIONS
from .export_common import ExportResult, check_region, parse_region
from .export_tiff import COMPRESSIONS, export_tiff, labels_path
from .export_zarr import export_ome_zarr
from .geojson import export_geojson
from .store import SlideStore

__all__ = [
    "FORMATS",
    "NGFF_VERSIONS",
    "COMPRESSIONS",
    "ExportResult",
    "parse_region",
    "check_region",
    "labels_path",
    "export_slide",
    "export_ome_zarr",
    "export_tiff",
    "export_geojson",
]

FORMATS = ("ome-zarr", "ome-tiff", "tiff", "geojson")


def export_slide(
    src: str | os.PathLike | SlideStore,
    out: str | os.PathLike,
    fmt: str,
    region: Sequence[int] | None = None,
    *,
    ngff_version: str = NGFF_VERSION,
    compression: str = "jpeg",
    quality: int = 90,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Export a slide store (or an (x, y, w, h) region of it) in format ``fmt``.

    ``fmt`` is one of :data:`FORMATS`. ``ngff_version`` applies to ``"ome-zarr"``;
    ``compression``/``quality`` to ``"ome-tiff"`` and ``"tiff"``. Returns an
    :class:`ExportResult` (path-like); its ``warnings`` say e.g. that the slide was still
    being generated. Raises :class:`ExportError` for bad inputs before writing anything;
    on failure or :class:`~napari_diffinfinite.progress.Cancelled` nothing is left at
    ``out``.
    """
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    common = {"overwrite": overwrite, "progress": progress, "cancel": cancel}
    if fmt == "ome-zarr":
        return export_ome_zarr(src, out, region, ngff_version=ngff_version, **common)
    if fmt in ("ome-tiff", "tiff"):
        layout = "ome" if fmt == "ome-tiff" else "openslide"
        return export_tiff(src, out, region, layout=layout, compression=compression, quality=quality, **common)
    return export_geojson(src, out, region, **common)
