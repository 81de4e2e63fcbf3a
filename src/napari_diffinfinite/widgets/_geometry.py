"""Where things sit in napari's world: slide pixels, the mask canvas and micrometres.

Every DiffInfinite layer lives in one world coordinate system, in micrometres when the
pixel size is known (1 world unit = 1 slide pixel otherwise), so that synthetic and real
slides, their labels, the mask canvas and exported regions overlay at their true size.
Nothing here imports Qt or napari, so these rules are tested without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# One rule for the canvas-to-slide geometry: the engine's (a canvas painted here is what it samples).
from ..engine.geometry import canvas_downsample, canvas_shape, canvas_transform

__all__ = [
    "MAX_CANVAS_SIDE", "MICROMETRE", "auto_downsample", "canvas_shape", "canvas_transform", "describe_length",
    "export_origin", "ngff_translation", "region_from_corners", "scaled", "slide_translation", "world_scale",
    "world_units",
]  # fmt: skip

#: the painting canvas in napari keeps its longer side at or below this many pixels (a GUI choice,
#: smaller than the engine's limit: brushes stay fast on software OpenGL)
MAX_CANVAS_SIDE = 2048
#: napari's name for micrometres (the scale bar shows "µm")
MICROMETRE = "um"


def auto_downsample(shape: tuple[int, int], max_side: int = MAX_CANVAS_SIDE) -> int:
    """The smallest power of two that brings the slide's longer side to ``max_side`` or less."""
    return canvas_downsample(shape, max_side)


def world_scale(pixel_size_um: float | None) -> float:
    """World units per slide pixel: the pixel size in µm, or 1 when it is unknown."""
    return float(pixel_size_um) if pixel_size_um else 1.0


def world_units(pixel_size_um: float | None) -> tuple[str, str] | None:
    """napari ``units`` of a layer whose scale is ``world_scale(pixel_size_um)``."""
    return (MICROMETRE, MICROMETRE) if pixel_size_um else None


def region_from_corners(corners: Any, slide_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of slide pixels covered by the box of ``corners`` ((n, 2) y, x in data pixels).

    A corner at coordinate v stands between pixels floor(v + 0.5) - 1 and floor(v + 0.5),
    so a rectangle from (10, 20) to (60, 90) covers rows 10..59 and columns 20..89. The box
    is clipped to the slide; an empty result raises ValueError.
    """
    corners = np.asarray(corners, dtype=float)[:, -2:]
    lo = np.floor(corners.min(axis=0) + 0.5).astype(int)
    hi = np.floor(corners.max(axis=0) + 0.5).astype(int)
    h, w = slide_shape
    y0, x0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    y1, x1 = min(int(hi[0]), h), min(int(hi[1]), w)
    if y1 <= y0 or x1 <= x0:
        raise ValueError("the rectangle does not cover any pixel of the slide: draw it over the slide")
    return (x0, y0, x1 - x0, y1 - y0)


def ngff_translation(attrs: dict[str, Any]) -> tuple[float, float] | None:
    """The (y, x) translation of level 0 in an OME-Zarr image's root attributes, if any.

    Sums the ``translation`` transforms of the first multiscale (its own and those of its
    first dataset), as NGFF 0.4 and 0.5 define them; None when there are none.
    """
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales or not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        return None
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets") or [{}]
    transforms = list(multiscale.get("coordinateTransformations") or [])
    transforms += list((datasets[0] or {}).get("coordinateTransformations") or [])
    found = [t for t in transforms if isinstance(t, dict) and t.get("type") == "translation"]
    if not found:
        return None
    total = np.zeros(2)
    for t in found:
        total += np.asarray(t.get("translation", [0, 0])[-2:], dtype=float)
    return (float(total[0]), float(total[1]))


def export_origin(provenance: dict[str, Any]) -> tuple[int, int] | None:
    """(y, x) level-0 pixel of the source slide where an exported region starts, if recorded."""
    region = (provenance.get("export") or {}).get("region") if isinstance(provenance, dict) else None
    if not isinstance(region, dict) or "x" not in region or "y" not in region:
        return None
    return (int(region["y"]), int(region["x"]))


def slide_translation(
    attrs: dict[str, Any], provenance: dict[str, Any], pixel_size_um: float | None
) -> tuple[float, float]:
    """World translation of a slide's level 0: its NGFF translation, else the origin of an
    exported region (so a region reopens at its place over its source), else (0, 0)."""
    translation = ngff_translation(attrs)
    if translation is not None:
        return translation
    origin = export_origin(provenance)
    if origin is not None:
        px = world_scale(pixel_size_um)
        return (origin[0] * px, origin[1] * px)
    return (0.0, 0.0)


def describe_length(pixels: int, pixel_size_um: float | None) -> str:
    """'16,384 px (16.4 mm)' — a slide side in pixels and, when known, physical length."""
    text = f"{int(pixels):,} px"
    if pixel_size_um:
        um = pixels * float(pixel_size_um)
        mm = um / 1000
        if um < 1000:
            text += f" ({um:.3g} µm)"
        else:  # 3 significant digits, but never "2e+04 mm"
            text += f" ({mm:.3g} mm)" if mm < 1000 else f" ({mm:,.0f} mm)"
    return text


def scaled(values: Sequence[float], factor: float) -> tuple[float, ...]:
    """``values`` times ``factor``, as a tuple."""
    return tuple(float(v) * factor for v in values)
