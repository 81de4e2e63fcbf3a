"""napari reader contributions: slide stores (``.zarr``) and real whole-slide images.

``napari slide.zarr`` or dragging the folder onto the viewer adds the slide's RGB pyramid
(lazy, browsable while a generation is still writing it), its tissue labels and the
provenance (in each layer's ``metadata["provenance"]``). Real slides (SVS, NDPI, MRXS, ...)
open through OpenSlide, next to synthetic ones, for comparison.

Nothing here imports Qt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike
LayerData = tuple[Any, dict, str]
ReaderFunction = Callable[[PathLike | list[PathLike]], list[LayerData]]

PROVENANCE_KEY = "diffinfinite"


def _single_path(path: PathLike | list[PathLike]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(os.fspath(path)).expanduser()


def _zarr_metadata(folder: Path, names: tuple[str, str]) -> tuple[str, dict[str, Any]] | None:
    """(file name, its JSON object) of the first of ``names`` in ``folder`` (zarr format 2, then
    3), or None: missing, unreadable, not an object, or hostile (nested too deep to decode)."""
    for name in names:
        meta = folder / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError, RecursionError):
                return None
            return (name, data) if isinstance(data, dict) else None
    return None


def root_attributes(path: Path) -> dict[str, Any] | None:
    """Root attributes of a zarr folder (format 2 or 3), without importing zarr."""
    found = _zarr_metadata(path, (".zattrs", "zarr.json"))
    if found is None:
        return None
    name, data = found
    attrs = data.get("attributes", {}) if name == "zarr.json" else data
    return attrs if isinstance(attrs, dict) else None


def is_slide_store(path: PathLike) -> bool:
    """True for an OME-Zarr folder holding an RGB (c, y, x) multiscale image.

    Cheap (reads one or two JSON files), so napari can ask for every dropped folder. Stores
    of other tools qualify too when their image is 8-bit RGB with axes (c, y, x).
    """
    p = Path(path)
    if not p.is_dir():
        return False
    attrs = root_attributes(p)
    if attrs is None:
        return False
    if isinstance(attrs.get(PROVENANCE_KEY), dict):
        return True
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    multiscales = ome.get("multiscales")
    if not multiscales or not isinstance(multiscales, list):
        return False
    axes = [a.get("name") if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])]
    return axes == ["c", "y", "x"] and _is_rgb8(p, multiscales[0])


def _is_rgb8(path: Path, multiscale: dict[str, Any]) -> bool:
    """Whether another tool's (c, y, x) image is 8-bit RGB (shown as a slide) by its first
    level's array metadata. Anything else (two fluorescence channels, 16-bit RGB) is left to
    readers that show it properly (napari-ome-zarr) instead of being claimed and then refused
    or shown saturated."""
    try:
        level = path / str(multiscale["datasets"][0]["path"])
    except (KeyError, IndexError, TypeError):
        return False
    found = _zarr_metadata(level, (".zarray", "zarr.json"))
    if found is None:
        return False
    array = found[1]
    dtype, shape = array.get("dtype", array.get("data_type")), array.get("shape")
    return isinstance(shape, list) and len(shape) == 3 and shape[0] == 3 and dtype in ("|u1", "uint8")


def napari_get_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Reader for a slide store folder, or None when ``path`` is not one."""
    p = _single_path(path)
    if p is None or not is_slide_store(p):
        return None
    return read_slide_store


def read_slide_store(path: PathLike | list[PathLike]) -> list[LayerData]:
    """Layer data of a slide store: RGB pyramid, tissue labels, provenance in metadata."""
    from .slide.store import SlideStore
    from .widgets._layers import slide_layer_data

    p = _single_path(path)
    if p is None:
        return []
    store = SlideStore.open(p, mode="r")
    return slide_layer_data(store)


def napari_get_wsi_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Reader for a real whole-slide image OpenSlide can open, or None."""
    p = _single_path(path)
    if p is None or not p.is_file():
        return None
    try:
        from .slide.openslide_reader import is_real_slide
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return read_real_slide if is_real_slide(p) else None


def read_real_slide(path: PathLike | list[PathLike]) -> list[LayerData]:
    """Layer data of a real slide: one lazy multiscale RGB layer, in µm when the file gives
    its pixel size (as synthetic slides are), so both overlay at their true size."""
    from .slide.openslide_reader import real_slide_layer_data

    p = _single_path(path)
    return [] if p is None else real_slide_layer_data(p, physical_scale=True)
