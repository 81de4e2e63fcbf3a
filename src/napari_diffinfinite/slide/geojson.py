"""Label images to QuPath GeoJSON annotations and back.

**Export.** Each class of a label image becomes one QuPath annotation (or one per
connected region): a ``Feature`` whose geometry is a ``Polygon``/``MultiPolygon`` with
holes in level-0 pixel coordinates (x right, y down, origin at the top-left corner of the
top-left pixel), with ``properties.objectType = "annotation"`` and
``properties.classification = {"name": ..., "color": [r, g, b]}``. Outlines are traced by
marching squares at the 0.5 level between pixel centres, so a pixel is inside a polygon
exactly when its centre is: rasterising an exported polygon at the resolution it was
traced at gives back the same pixels. Regions that touch only at a corner are separate.

**Import.** Accepts what QuPath writes (a ``FeatureCollection``, a bare list of features,
or a single ``Feature``; ``classification`` with ``name``, or ``names`` for derived
classes, and ``color`` or the older ``colorRGB``). Area geometries are rasterised by
pixel centre (even-odd rule, so holes stay holes) onto a label canvas; points and lines
are skipped and counted. Features are painted in file order, so where annotations
overlap **the later one wins**. Class names are matched to the model's classes exactly,
then ignoring case; unknown names are an error by default, or skipped and reported.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry import shape as to_shape
from shapely.geometry.polygon import orient

from ..errors import ExportError, MaskError
from ..progress import CancelToken, ProgressCallback, check
from .atomic import atomic_path, check_target
from .constants import LABEL_NAME, PROVENANCE_KEY, TILE
from .export_common import (
    ExportProgress,
    ExportResult,
    check_region,
    export_provenance,
    export_warnings,
    label_source,
    open_source,
)
from .store import SlideStore

__all__ = [
    "normalise_color",
    "trace_label_polygons",
    "labels_to_features",
    "labels_to_geojson",
    "read_geojson_features",
    "GeoJsonImport",
    "geojson_to_labels",
    "rasterise_geometry",
    "export_geojson",
]

ANNOTATION_TYPES = ("annotation",)
"""QuPath object types imported by default; detections, cells and tiles are skipped."""

ALL_AREA_TYPES = ("annotation", "detection", "cell", "tile")
"""QuPath object types painted with ``--include-detections``."""


def normalise_color(color: Any) -> list[int]:
    """An [r, g, b] list from [r, g, b(, a)], "#rrggbb", or a packed (A)RGB integer."""
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) in (6, 8):
            return [int(text[i : i + 2], 16) for i in (0, 2, 4)]
        raise ValueError(f"not a colour: {color!r}")
    if isinstance(color, (int, np.integer)):
        value = int(color) & 0xFFFFFF
        return [(value >> 16) & 255, (value >> 8) & 255, value & 255]
    values = [int(round(float(v))) for v in color]
    if len(values) not in (3, 4):
        raise ValueError(f"not a colour: {color!r}")
    if all(0.0 <= float(v) <= 1.0 for v in color) and any(isinstance(v, float) for v in color):
        values = [int(round(float(v) * 255)) for v in color]
    return values[:3]


# --------------------------------------------------------------------------- export


def _drop_collinear(contour: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed (first == last) ring that lie on a straight run."""
    ring = contour[:-1]
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept = ring[turn != 0]
    return np.vstack([kept, kept[:1]]) if len(kept) >= 3 else contour


def _ring_coords(contour: np.ndarray, scale: tuple[float, float], offset: tuple[float, float]):
    """Marching-squares (row, col) of the 1-padded image -> level-0 (x, y)."""
    contour = _drop_collinear(contour)
    sy, sx = scale
    ox, oy = offset
    # -1 undoes the padding, +0.5 moves from pixel-centre to pixel-corner coordinates.
    x = (contour[:, 1] - 0.5) * sx + ox
    y = (contour[:, 0] - 0.5) * sy + oy
    return np.column_stack([x, y])


def trace_label_polygons(
    mask: np.ndarray,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[float, float] = (0.0, 0.0),
) -> list[Polygon]:
    """Polygons with holes covering the True pixels of a 2-D boolean ``mask``.

    ``scale`` is the level-0 pixels per mask pixel along (y, x) and ``offset`` the level-0
    (x, y) of the mask's top-left corner. Returns one polygon per 4-connected region.
    """
    from skimage import measure

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.pad(mask, 1).view(np.uint8)  # skimage makes its own float64 copy
    contours = measure.find_contours(padded, 0.5, fully_connected="low", positive_orientation="high")
    shells: list[Polygon] = []
    holes: list[Polygon] = []
    for contour in contours:
        if len(contour) < 4:
            continue
        ring = shapely.LinearRing(_ring_coords(contour, scale, offset))
        # In (x, y-down) coordinates marching squares winds outer boundaries clockwise
        # (as shapely sees them) and hole boundaries counter-clockwise.
        (holes if ring.is_ccw else shells).append(Polygon(ring))
    hole_lists: list[list] = [[] for _ in shells]
    if holes and shells:
        tree = shapely.STRtree(shells)
        areas = np.array([s.area for s in shells])
        for hole in holes:
            candidates = tree.query(hole, predicate="contains_properly")
            if len(candidates) == 0:
                candidates = tree.query(hole.representative_point(), predicate="intersects")
            if len(candidates) == 0:
                continue
            owner = int(candidates[np.argmin(areas[candidates])])
            hole_lists[owner].append(hole.exterior.coords)
    polygons = []
    for shell, its_holes in zip(shells, hole_lists):
        polygon = Polygon(shell.exterior.coords, its_holes)
        if not polygon.is_valid:
            polygon = shapely.make_valid(polygon)
        polygons.extend(_polygons_of(polygon))
    return polygons


def _polygons_of(geometry: Any) -> list[Polygon]:
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return list(geometry.geoms)
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons_of(g)]
    return []


def _as_geojson_geometry(polygons: list[Polygon]) -> dict:
    polygons = [orient(p, 1.0) for p in polygons]
    geometry = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    return json.loads(json.dumps(mapping(geometry)))  # tuples -> lists, plain floats


def labels_to_features(
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    scale: float | tuple[float, float] = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    clip: tuple[float, float, float, float] | None = None,
    skip_labels: Iterable[int] = (0,),
    split_regions: bool = False,
    simplify: float = 0.0,
) -> list[dict]:
    """QuPath annotation features for every class present in a uint8 label image.

    ``scale``: level-0 pixels per label pixel (y, x); ``offset``: level-0 (x, y) of the
    label image's corner; ``clip``: (xmin, ymin, xmax, ymax) to cut the geometries to
    (e.g. the slide or region bounds). ``simplify`` is a Douglas-Peucker tolerance in
    level-0 pixels (0 keeps the traced outline). With ``split_regions`` every connected
    region is its own feature, else one (Multi)Polygon feature per class.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MaskError(f"a label image must be 2-D, got shape {labels.shape}")
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    skip = set(int(v) for v in skip_labels)
    clip_box = box(*clip) if clip is not None else None
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    present = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=1))]
    features: list[dict] = []
    objects = ndimage.find_objects(labels)
    for value in present:
        if value in skip:
            continue
        name = class_names[value] if value < len(class_names) else f"class {value}"
        color = (
            normalise_color(class_colors[value])
            if class_colors is not None and value < len(class_colors)
            else [128, 128, 128]
        )
        if value == 0:
            rows, cols = slice(0, labels.shape[0]), slice(0, labels.shape[1])
        else:
            rows, cols = objects[value - 1]
        sub = labels[rows, cols] == value
        polygons = trace_label_polygons(
            sub,
            scale=(sy, sx),
            offset=(offset[0] + cols.start * sx, offset[1] + rows.start * sy),
        )
        if simplify > 0:
            simpler = [shapely.make_valid(g.simplify(simplify, preserve_topology=True)) for g in polygons]
            polygons = [p for g in simpler for p in _polygons_of(g)]
        if clip_box is not None:
            polygons = [p for g in polygons for p in _polygons_of(g.intersection(clip_box))]
        if not polygons:
            continue
        groups = [[p] for p in polygons] if split_regions else [polygons]
        for group in groups:
            features.append(
                {
                    "type": "Feature",
                    # New for every export: QuPath keeps ids unique across a project.
                    "id": str(uuid.uuid4()),
                    "geometry": _as_geojson_geometry(group),
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": color},
                        "isLocked": False,
                    },
                }
            )
    return features


def labels_to_geojson(labels: np.ndarray, **kwargs: Any) -> dict:
    """A GeoJSON ``FeatureCollection`` of :func:`labels_to_features` (same arguments)."""
    return {"type": "FeatureCollection", "features": labels_to_features(labels, **kwargs)}


# --------------------------------------------------------------------------- import


def read_geojson_features(source: str | os.PathLike | dict | list) -> list[dict]:
    """The features of a GeoJSON file, JSON text, or parsed object.

    Accepts a ``FeatureCollection``, a list of features, a single ``Feature`` or a bare
    geometry. Raises :class:`MaskError` for anything else.
    """
    data: Any = source
    origin = "the GeoJSON"
    if isinstance(source, (str, os.PathLike)):
        text = str(source) if isinstance(source, str) else None
        if text is not None and text.lstrip()[:1] in ("{", "["):
            payload = text
        else:
            path = Path(source).expanduser()
            origin = str(path)
            if not path.is_file():
                raise MaskError(f"GeoJSON file {path} does not exist (or is not a file)")
            try:
                payload = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise MaskError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # bad JSON, a 5000-digit number, nesting 10^5 deep
            raise MaskError(f"{origin} is not valid JSON: {str(exc)[:200]}") from None
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and ("coordinates" in data or "geometries" in data):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise MaskError(
            f"{origin} is not GeoJSON annotations: expected a FeatureCollection, a list of "
            "features or a Feature (export annotations from QuPath with File > Export "
            "objects as GeoJSON)"
        )
    if not all(isinstance(f, dict) for f in features):
        raise MaskError(f"{origin}: every feature must be a JSON object")
    return features


def _class_name(properties: dict) -> tuple[str, str] | None:
    """(full name, base name) of a feature's class; a derived class "dermis: Positive" has base "dermis"."""
    classification = properties.get("classification")
    name: str | None = None
    names: list[str] = []
    if isinstance(classification, str):
        name = classification
    elif isinstance(classification, dict):
        raw = classification.get("names")
        if isinstance(raw, list) and raw:
            names = [str(n) for n in raw]
        if classification.get("name"):
            name = str(classification["name"])
        elif names:
            name = ": ".join(names)
    if not name:
        return None
    base = names[0] if names else name.split(": ")[0]
    return name, base


def _object_type(properties: dict) -> str:
    """QuPath's ``objectType`` ("annotation" when absent, as QuPath imports plain GeoJSON)."""
    value = properties.get("objectType") or properties.get("object_type") or "annotation"
    return str(value).lower()


@dataclass
class GeoJsonImport:
    """Result of :func:`geojson_to_labels`.

    ``canvas``: uint8 labels (``background`` where no annotation lies); ``slide_shape``:
    the level-0 (H, W) the canvas covers; ``painted``: features painted per class name;
    ``derived``: derived class names painted as their base class (``"dermis: Positive"`` ->
    ``"dermis"``); ``unknown``: features skipped per unknown class name; ``unclassified``:
    features without a class (skipped); ``not_areas``: point/line features (skipped);
    ``skipped_objects``: features skipped per QuPath object type (detections, cells, ...).
    """

    canvas: np.ndarray
    slide_shape: tuple[int, int]
    painted: dict[str, int] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    unclassified: int = 0
    not_areas: int = 0
    skipped_objects: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"painted {sum(self.painted.values())} annotations"]
        if self.derived:
            names = ", ".join(f"{name!r} as {base!r}" for name, base in self.derived.items())
            parts.append(f"painted derived classes as their base class: {names}")
        if self.skipped_objects:
            kinds = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in self.skipped_objects.items())
            parts.append(f"skipped {kinds} (only annotations are imported; --include-detections paints them too)")
        if self.unknown:
            names = ", ".join(f"{name!r} ({n})" for name, n in self.unknown.items())
            parts.append(f"skipped unknown classes {names}")
        if self.unclassified:
            parts.append(f"skipped {self.unclassified} unclassified")
        if self.not_areas:
            parts.append(f"skipped {self.not_areas} points/lines")
        return "; ".join(parts)


def _fill_even_odd(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels of an (h, w) grid whose centres lie inside ``rings`` (even-odd rule).

    Rings are (n, 2) arrays of (x, y) in pixel-index coordinates (pixel (r, c) has its
    centre at x=c, y=r). A scanline fill, vectorised over all edges at once.
    """
    h, w = shape
    starts, ends = [], []
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64)
        if len(ring) < 3:
            continue
        closed = np.vstack([ring, ring[:1]]) if not np.array_equal(ring[0], ring[-1]) else ring
        starts.append(closed[:-1])
        ends.append(closed[1:])
    out = np.zeros((h, w), dtype=bool)
    if not starts:
        return out
    p0, p1 = np.concatenate(starts), np.concatenate(ends)
    keep = p0[:, 1] != p1[:, 1]
    p0, p1 = p0[keep], p1[keep]
    if len(p0) == 0:
        return out
    ylo = np.minimum(p0[:, 1], p1[:, 1])
    yhi = np.maximum(p0[:, 1], p1[:, 1])
    # Row r is crossed when ylo <= r < yhi (half-open, so vertices are counted once).
    r0 = np.clip(np.ceil(ylo), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(yhi), 0, h).astype(np.int64)
    counts = np.maximum(r1 - r0, 0)
    total = int(counts.sum())
    if total == 0:
        return out
    edge = np.repeat(np.arange(len(p0)), counts)
    rows = r0[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    e0, e1 = p0[edge], p1[edge]
    xs = e0[:, 0] + (rows - e0[:, 1]) * (e1[:, 0] - e0[:, 0]) / (e1[:, 1] - e0[:, 1])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # Each row has an even number of crossings; consecutive pairs enclose the inside,
    # and pairs never overlap, so the running sum below is 0 or 1 (int8 is enough).
    prow = rows[0::2]
    c0 = np.clip(np.ceil(xs[0::2]), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(xs[1::2]), 0, w).astype(np.int64)
    diff = np.zeros((h, w + 1), dtype=np.int8)
    np.add.at(diff, (prow, c0), 1)
    np.add.at(diff, (prow, c1), -1)
    np.cumsum(diff[:, :w], axis=1, dtype=np.int8, out=diff[:, :w])
    return diff[:, :w] > 0


def rasterise_geometry(
    geometry: Any, canvas_shape: tuple[int, int], scale: tuple[float, float]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixels of a canvas covered by a shapely area geometry in level-0 coordinates.

    ``scale`` is canvas pixels per level-0 pixel along (y, x). Returns the bounding box
    of the covered pixels and a boolean mask of that box, or None when nothing is covered.
    """
    polygons = _polygons_of(geometry)
    if not polygons:
        return None
    h, w = canvas_shape
    sy, sx = scale
    xmin, ymin, xmax, ymax = shapely.total_bounds(polygons)
    r_lo = max(0, math.ceil(ymin * sy - 0.5))
    r_hi = min(h, math.ceil(ymax * sy - 0.5))
    c_lo = max(0, math.ceil(xmin * sx - 0.5))
    c_hi = min(w, math.ceil(xmax * sx - 0.5))
    if r_hi <= r_lo or c_hi <= c_lo:
        return None
    window = (r_hi - r_lo, c_hi - c_lo)

    def index_rings(polygon: Polygon, r_off: int, c_off: int) -> list[np.ndarray]:
        rings = []
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)[:, :2]
            rings.append(np.column_stack([xy[:, 0] * sx - 0.5 - c_off, xy[:, 1] * sy - 0.5 - r_off]))
        return rings

    if len(polygons) == 1 or MultiPolygon(polygons).is_valid:
        # Valid multipolygons do not overlap: one even-odd pass over all rings is exact.
        rings = [r for p in polygons for r in index_rings(p, r_lo, c_lo)]
        covered = _fill_even_odd(rings, window)
    else:
        covered = np.zeros(window, dtype=bool)
        for polygon in polygons:
            hit = rasterise_geometry(polygon, canvas_shape, scale)
            if hit is not None:
                (rows, cols), part = hit
                covered[rows.start - r_lo : rows.stop - r_lo, cols.start - c_lo : cols.stop - c_lo] |= part
    if not covered.any():
        return None
    return (slice(r_lo, r_hi), slice(c_lo, c_hi)), covered


def _match_class(name: str, class_names: Sequence[str]) -> int | None:
    for i, known in enumerate(class_names):
        if known == name:
            return i
    lowered = name.casefold()
    for i, known in enumerate(class_names):
        if known.casefold() == lowered:
            return i
    return None


def geojson_to_labels(
    source: str | os.PathLike | dict | list,
    *,
    class_names: Sequence[str],
    slide_shape: tuple[int, int],
    canvas_shape: tuple[int, int] | None = None,
    downsample: float | None = None,
    background: int = 0,
    on_unknown: str = "error",
    max_canvas_side: int = 4096,
    object_types: Sequence[str] = ANNOTATION_TYPES,
    origin: tuple[float, float] = (0.0, 0.0),
) -> GeoJsonImport:
    """Rasterise QuPath GeoJSON annotations into a label canvas for generation.

    Coordinates are level-0 pixels of a slide of ``slide_shape`` (H, W). The canvas is
    ``canvas_shape`` if given, else the slide divided by ``downsample``, else the slide
    shrunk by the smallest power of two that brings its longer side to at most
    ``max_canvas_side``. Canvas pixel (i, j) covers the same slide pixels as it does in
    :class:`~napari_diffinfinite.slide.masks.CanvasMask`. Class names map to indices of
    ``class_names`` (exact, then case-insensitive); ``on_unknown="error"`` raises
    :class:`MaskError` naming unknown classes, ``"skip"`` leaves them out and reports them.
    Overlaps: later features win. Only features whose QuPath ``objectType`` is in
    ``object_types`` are painted (by default annotations: an "export all objects" file also
    holds every detected cell); the others are counted in ``skipped_objects``. A derived
    class (``names: ["dermis", "Positive"]``) that the model lacks is painted as its base
    class when the model has that, and reported in ``derived``. ``origin``: the level-0 (x, y)
    where the canvas's corner lies (a trainer reading a slide from an offset grid).
    """
    if on_unknown not in ("error", "skip"):
        raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")
    H, W = (int(v) for v in slide_shape)
    if H <= 0 or W <= 0:
        raise MaskError(f"the slide shape must be positive, got {slide_shape}")
    if canvas_shape is None:
        if downsample is None:
            downsample = 1.0
            while max(H, W) / downsample > max_canvas_side:
                downsample *= 2
        if downsample <= 0:
            raise MaskError(f"downsample must be positive, got {downsample}")
        canvas_shape = (max(1, math.ceil(H / downsample)), max(1, math.ceil(W / downsample)))
    ch, cw = (int(v) for v in canvas_shape)
    if not 0 <= background <= 255:
        raise MaskError(f"the background label must be in 0..255, got {background}")

    wanted = {str(t).lower() for t in object_types}
    features = read_geojson_features(source)
    result = GeoJsonImport(canvas=np.full((ch, cw), background, dtype=np.uint8), slide_shape=(H, W))
    planned: list[tuple[int, str, Any]] = []
    unknown: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for feature in features:
        properties = feature.get("properties") or {}
        kind = _object_type(properties)
        if kind not in wanted:
            skipped[kind] += 1
            continue
        geometry = feature.get("geometry")
        if geometry is None:
            result.not_areas += 1
            continue
        try:
            geom = to_shape(geometry)
        except Exception as exc:
            raise MaskError(f"a feature has an unreadable geometry: {exc}") from exc
        if not np.isfinite(shapely.get_coordinates(geom)).all():  # GEOS fails on these later, cryptically
            raise MaskError("a feature has coordinates that are not finite numbers (NaN or infinity)")
        if not _polygons_of(geom) and not geom.is_empty:
            result.not_areas += 1
            continue
        named = _class_name(properties)
        if named is None:
            result.unclassified += 1
            continue
        name, base = named
        label = _match_class(name, class_names)
        if label is None and base != name:
            label = _match_class(base, class_names)
            if label is not None:
                result.derived[name] = class_names[label]
        if label is None:
            unknown[name] += 1
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        if origin != (0.0, 0.0):
            geom = shapely.affinity.translate(geom, -origin[0], -origin[1])
        planned.append((label, class_names[label], geom))
    if unknown and on_unknown == "error":
        shown = list(unknown.items())[:10]  # names are the file's: a few, each cut short
        found = ", ".join(f"{n[:60]!r} ({c} feature{'s' if c > 1 else ''})" for n, c in shown)
        if len(unknown) > len(shown):
            found += f" and {len(unknown) - len(shown)} more"
        known = ", ".join(f"{i} = {n!r}" for i, n in enumerate(class_names))
        raise MaskError(
            f"the GeoJSON uses classes the model does not have: {found}. The model's "
            f"classes are {known}. Rename the classes in QuPath, or pass --skip-unknown "
            "(on_unknown='skip' from Python) to leave them out."
        )
    result.unknown = dict(unknown)
    result.skipped_objects = dict(skipped)
    scale = (ch / H, cw / W)
    painted: Counter[str] = Counter()
    for label, name, geom in planned:
        hit = rasterise_geometry(geom, (ch, cw), scale)
        painted[name] += 1
        if hit is None:
            continue
        window, covered = hit
        result.canvas[window][covered] = label
    result.painted = dict(painted)
    return result


# --------------------------------------------------------------------------- export of a store


def export_geojson(
    src: str | os.PathLike | SlideStore,
    out: str | os.PathLike,
    region: Sequence[int] | None = None,
    *,
    max_pixels: int = 4096 * 4096,
    split_regions: bool = False,
    simplify: float = 0.0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Export the labels of ``region`` (or the whole slide) as QuPath GeoJSON annotations.

    Outlines are traced on the finest label level whose region has at most
    ``max_pixels`` pixels (so memory is bounded whatever the slide size) and scaled to
    level-0 pixel coordinates relative to the region's top-left corner, i.e. the
    coordinates of the exported region image. ``split_regions``: one annotation per
    connected region instead of one per class; ``simplify``: Douglas-Peucker tolerance
    in level-0 pixels.
    """
    store = open_source(src)
    box = check_region(region, store.shape)
    target = check_target(out, overwrite=overwrite)
    if label_source(store) is None:
        raise ExportError(f"{store.path} has no {LABEL_NAME!r} label image to export as GeoJSON")
    x, y, w, h = box
    k = 0
    while k + 1 < store.num_levels and (-(-h // 2**k)) * (-(-w // 2**k)) > max_pixels:
        k += 1
    if (-(-h // 2**k)) * (-(-w // 2**k)) > max_pixels:
        raise ExportError(
            f"the labels of this {w} x {h} px region are {-(-w // 2**k)} x {-(-h // 2**k)} px even at the coarsest of "
            f"the store's {store.num_levels} levels; GeoJSON outlines are traced on at most {max_pixels:,} px: "
            "export a smaller --region, or a store with a pyramid"
        )
    f = 2**k
    r0, r1 = y // f, min(-(-(y + h) // f), store.level_shapes[k][0])
    c0, c1 = x // f, min(-(-(x + w) // f), store.level_shapes[k][1])
    level = store.label_level(k)
    rows = list(range(r0, r1, TILE))
    present_classes = len(store.class_names)
    counter = ExportProgress(progress, len(rows) + present_classes, "reading labels")
    labels = np.empty((r1 - r0, c1 - c0), dtype=np.uint8)
    for start in rows:
        check(cancel)
        stop = min(start + TILE, r1)
        labels[start - r0 : stop - r0] = level[start:stop, c0:c1]
        counter.step()
    check(cancel)
    counter.message = "tracing outlines"
    features = labels_to_features(
        labels,
        class_names=store.class_names,
        class_colors=store.class_colors,
        scale=(float(f), float(f)),
        offset=(c0 * f - x, r0 * f - y),
        clip=(0.0, 0.0, float(w), float(h)),
        split_regions=split_regions,
        simplify=simplify,
    )
    check(cancel)
    collection = {
        "type": "FeatureCollection",
        "features": features,
        PROVENANCE_KEY: export_provenance(store, "geojson", box),
    }
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(collection, fh)
    counter.finish()
    return ExportResult(
        path=target,
        format="geojson",
        region=box,
        files=[target],
        num_levels=1,
        warnings=export_warnings(store, True),
    )
