"""Seam score: does an image have edges that repeat at a fixed phase of the patch grid?

A sampler or a tiled decoder that stitches patches on a fixed grid leaves a faint step in
brightness at every patch border. Such steps are invisible to FID but obvious to a
pathologist scrolling a slide. The score makes them measurable:

1. **Luminance.** RGB uint8 is turned into luminance in [0, 1] (Rec. 601 weights
   0.299, 0.587, 0.114); an (H, W) float image is taken as luminance as it is.
2. **Gradient energy.** Along x, ``|L[y, x] - L[y, x - 1]|`` for every x >= 1 (the step
   *into* column x, so a border between patches at x = k * P lands on phase 0); along y the
   same with rows.
3. **Fold.** The gradient is averaged over every pixel whose position along the axis has
   the same value modulo the period (the patch size, or the decode tile size): a profile
   of ``period`` values per axis.
4. **Score.** ``max(profile) / median(profile)`` per axis, with the phase of the maximum.
   A seam-free image gives a flat profile and a score of about 1.0 (noise lifts it a
   little, less the larger the image); a seam at a fixed phase gives a peak and a score
   well above 1. The overall score is the larger of the two axes.

Where the image is generated from a layout, the edges between its classes are drawn on
purpose, and a layout whose class borders fall on multiples of the period (a band or a
checkerboard of 128 px squares) would score them as seams. ``exclude`` (an (H, W) bool
mask, e.g. :func:`near_label_edges` of the layout) leaves the gradients that touch its
pixels out of the fold.

The image must span at least two periods along each axis, so that every phase is averaged
over more than one position. Large slides are scored region by region
(:func:`seam_score_of_regions`) with the same result as scoring the whole image at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DiffInfiniteError

__all__ = [
    "DEFAULT_EDGE_DISTANCE",
    "DEFAULT_PERIOD",
    "AxisSeam",
    "SeamScore",
    "FoldedGradient",
    "luminance",
    "near_label_edges",
    "seam_score",
    "seam_scores",
    "seam_score_of_regions",
]

DEFAULT_PERIOD = 128
DEFAULT_EDGE_DISTANCE = 8  # px around a layout's class borders left out of the score
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0


class SeamError(DiffInfiniteError):
    """An image cannot be given a seam score (wrong shape, or too small for the period)."""


@dataclass(frozen=True)
class AxisSeam:
    """The folded gradient profile along one axis and its peak-to-median ratio."""

    score: float  # max(profile) / median(profile); 1.0 = flat
    phase: int  # position modulo the period where the profile peaks
    profile: np.ndarray = field(repr=False)  # mean |gradient| per phase, length = period

    def to_dict(self) -> dict:
        return {
            "score": _finite_or_none(self.score),
            "phase": self.phase,
            "profile": [round(float(v), 7) for v in self.profile],
        }


@dataclass(frozen=True)
class SeamScore:
    """Seam scores along x (columns) and y (rows) for one period."""

    period: int
    x: AxisSeam
    y: AxisSeam

    @property
    def score(self) -> float:
        """The worse (larger) of the two axis scores."""
        return max(self.x.score, self.y.score)

    def to_dict(self) -> dict:
        return {
            "period": self.period,
            "score": _finite_or_none(self.score),
            "x": self.x.to_dict(),
            "y": self.y.to_dict(),
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def luminance(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] as float32 (H, W) of an (H, W, 3) uint8 image, or an (H, W) float image as is."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return image.astype(np.float32) @ _LUMA
    if image.ndim == 2 and np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise SeamError(
        f"seam score needs an (H, W, 3) uint8 RGB image or an (H, W) float luminance image, "
        f"got shape {image.shape} dtype {image.dtype}"
    )


class FoldedGradient:
    """Accumulates |gradient| sums per phase, region by region, for one period.

    Regions are given with their absolute origin ``(y0, x0)`` in the image, so phases are
    positions in the whole image. Gradients are taken inside a region only: to count the
    steps between neighbouring regions, read each region with one extra row above and one
    extra column to the left and add its x- and y-steps separately (as
    :func:`seam_score_of_regions` does), so no gradient is counted twice.

    With ``classes`` (the layout's class of every pixel), sums are kept per class and each
    class is divided by its own mean gradient when the result is taken (see
    :func:`seam_scores`): one pass, whatever the number of regions.
    """

    def __init__(self, period: int = DEFAULT_PERIOD) -> None:
        if int(period) < 2:
            raise SeamError(f"the seam period must be at least 2 pixels, got {period}")
        self.period = int(period)
        # per class (None: no layout), per axis: the |gradient| sum and the count at each phase
        self._sum: dict[int | None, dict[str, np.ndarray]] = {}
        self._count: dict[int | None, dict[str, np.ndarray]] = {}
        self._extent = [0, 0]  # largest (y, x) end seen, to check the image spans two periods

    def add(
        self,
        lum: np.ndarray,
        y0: int = 0,
        x0: int = 0,
        *,
        axes: str = "xy",
        exclude: np.ndarray | None = None,
        classes: np.ndarray | None = None,
    ) -> None:
        """Add the gradients inside the luminance region whose top-left pixel is at ``(y0, x0)``.

        ``axes`` selects the gradients counted: ``"x"`` (steps between columns), ``"y"``
        (steps between rows) or both. ``exclude``: (h, w) bool, pixels whose gradients (to or
        from them) are not counted. ``classes``: (h, w) integer layout classes; a step counts
        for the class of the pixel it goes into (give all regions classes, or none).
        """
        lum = np.asarray(lum, dtype=np.float32)
        h, w = lum.shape
        for name, mask in (("exclusion mask", exclude), ("class map", classes)):
            if mask is not None and np.shape(mask) != (h, w):
                raise SeamError(f"the {name} is {np.shape(mask)}, the image {(h, w)}")
        keep = None if exclude is None else ~np.asarray(exclude, bool)
        self._extent = [max(self._extent[0], y0 + h), max(self._extent[1], x0 + w)]
        if "x" in axes and w > 1:
            step = np.abs(np.diff(lum, axis=1))  # steps into columns x0+1 .. x0+w-1
            both = None if keep is None else keep[:, 1:] & keep[:, :-1]
            into = None if classes is None else np.asarray(classes)[:, 1:]
            self._accumulate("x", step, both, into, x0 + 1, along=0)
        if "y" in axes and h > 1:
            step = np.abs(np.diff(lum, axis=0))  # steps into rows y0+1 .. y0+h-1
            both = None if keep is None else keep[1:] & keep[:-1]
            into = None if classes is None else np.asarray(classes)[1:]
            self._accumulate("y", step, both, into, y0 + 1, along=1)

    def _accumulate(
        self, axis: str, step: np.ndarray, keep: np.ndarray | None, into: np.ndarray | None, start: int, along: int
    ) -> None:
        """Sum ``step`` (where ``keep``) over the other axis (``along``), per class of ``into``, and
        fold the sums by phase."""
        phases = (start + np.arange(step.shape[1 - along])) % self.period
        if into is None:
            groups = [(None, keep)]
        else:
            groups = [(int(c), into == c if keep is None else (into == c) & keep) for c in np.unique(into)]
        for label, member in groups:
            if member is None:
                sums = step.sum(axis=along, dtype=np.float64)
                counts = np.full(sums.size, step.shape[along], np.int64)
            else:
                sums = np.where(member, step, 0).sum(axis=along, dtype=np.float64)
                counts = member.sum(axis=along, dtype=np.int64)
            if label not in self._sum:
                self._sum[label] = {a: np.zeros(self.period, np.float64) for a in "xy"}
                self._count[label] = {a: np.zeros(self.period, np.int64) for a in "xy"}
            self._sum[label][axis] += np.bincount(phases, weights=sums, minlength=self.period)
            self._count[label][axis] += np.bincount(phases, weights=counts, minlength=self.period).astype(np.int64)

    def result(self) -> SeamScore:
        """The seam score of everything added so far."""
        for axis, extent in zip("yx", self._extent):
            if extent < 2 * self.period:
                raise SeamError(
                    f"the image is {extent} px along {axis}: a seam score at period {self.period} needs at least "
                    f"{2 * self.period} px (two periods); use a larger image or a smaller period"
                )
        return SeamScore(self.period, x=self._axis("x"), y=self._axis("y"))

    def _axis(self, axis: str) -> AxisSeam:
        total = np.zeros(self.period, np.float64)
        count = np.zeros(self.period, np.int64)
        for label, sums in self._sum.items():
            counts = self._count[label]
            scale = 1.0
            if label is not None:  # the class's mean |gradient| over both axes, away from class borders
                mean = (sums["x"].sum() + sums["y"].sum()) / max(int(counts["x"].sum() + counts["y"].sum()), 1)
                if mean <= 0:
                    continue  # a class without texture (flat glass) is left out, as it cannot show a seam
                scale = 1.0 / mean
            total += sums[axis] * scale
            count += counts[axis]
        profile = total / np.maximum(count, 1)
        peak = float(profile.max())
        median = float(np.median(profile))
        if median > 0:
            score = peak / median
        else:  # a flat image is seam-free; a median of 0 under a nonzero peak is an isolated edge
            score = 1.0 if peak == 0 else math.inf
        return AxisSeam(score=score, phase=int(np.argmax(profile)), profile=profile)


def seam_score(
    image: np.ndarray,
    period: int = DEFAULT_PERIOD,
    *,
    exclude: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    edge_distance: int = DEFAULT_EDGE_DISTANCE,
) -> SeamScore:
    """Seam score of a whole image (H, W, 3) uint8 or (H, W) float at one period, leaving out
    the gradients that touch ``exclude`` ((H, W) bool; e.g. :func:`near_label_edges`); with
    ``labels``, see :func:`seam_scores`."""
    return seam_scores(image, (period,), exclude=exclude, labels=labels, edge_distance=edge_distance)[int(period)]


def seam_scores(
    image: np.ndarray,
    periods: Iterable[int] = (DEFAULT_PERIOD,),
    *,
    exclude: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    edge_distance: int = DEFAULT_EDGE_DISTANCE,
) -> dict[int, SeamScore]:
    """Seam scores at several periods (e.g. the patch size and the decode tile size), keyed by period.

    ``labels`` ((H, W) classes of the layout the image was generated from): the gradients within
    ``edge_distance`` px of a class border are left out, and each class's gradients are divided
    by that class's mean gradient, so that classes of different texture (glass is flat, tissue
    is not) weigh the same at every phase: on a small layout whose classes cover the phases
    unevenly, raw gradients would peak where the busiest class is, seam or not.
    """
    lum = luminance(image)
    if labels is not None:
        near = near_label_edges(labels, edge_distance)
        exclude = near if exclude is None else exclude | near
    out: dict[int, SeamScore] = {}
    for period in dict.fromkeys(int(p) for p in periods):
        folded = FoldedGradient(period)
        folded.add(lum, exclude=exclude, classes=labels)
        out[period] = folded.result()
    return out


def near_label_edges(labels: np.ndarray, distance: int = DEFAULT_EDGE_DISTANCE) -> np.ndarray:
    """(H, W) bool: the pixels within ``distance`` px (a square neighbourhood) of a pixel of
    another class in the (H, W) integer ``labels``; for ``exclude``, so that the class borders a
    layout asks for are not scored as seams."""
    from scipy.ndimage import maximum_filter, minimum_filter

    labels = np.asarray(labels)
    size = 2 * int(distance) + 1
    return maximum_filter(labels, size=size, mode="nearest") != minimum_filter(labels, size=size, mode="nearest")


def _part(mask: np.ndarray | None, rows: slice, cols: slice) -> np.ndarray | None:
    return None if mask is None else mask[rows, cols]


def seam_score_of_regions(
    read_region: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    periods: Sequence[int] = (DEFAULT_PERIOD,),
    *,
    tile: int = 2048,
    progress: Callable[[int, int], None] | None = None,
    read_labels: Callable[[int, int, int, int], np.ndarray] | None = None,
    edge_distance: int = DEFAULT_EDGE_DISTANCE,
) -> dict[int, SeamScore]:
    """Seam scores of an image too large to hold, read as tiles.

    ``read_region(y0, y1, x0, x1)`` returns the image's pixels ``[y0:y1, x0:x1]`` (RGB uint8
    or float luminance). Each tile is read with one extra row and column before it, so the
    steps across tile borders are counted exactly once: the result equals :func:`seam_scores`
    of the whole image. ``progress(done, total)`` is called after each tile.
    ``read_labels`` (same signature, (h, w) integer classes): as ``labels`` of
    :func:`seam_scores` (class borders left out, each class divided by its mean gradient),
    with the same result.
    """
    h, w = shape
    folders = [FoldedGradient(p) for p in dict.fromkeys(int(p) for p in periods)]
    origins = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    d = int(edge_distance)
    for i, (y0, x0) in enumerate(origins):
        ry0, rx0, ry1, rx1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y0 + tile, h), min(x0 + tile, w)
        lum = luminance(read_region(ry0, ry1, rx0, rx1))
        exclude = classes = None
        if read_labels is not None:  # labels read with the distance around, so tile borders see their neighbours
            ly0, lx0 = max(ry0 - d, 0), max(rx0 - d, 0)
            around = np.asarray(read_labels(ly0, min(ry1 + d, h), lx0, min(rx1 + d, w)))
            inner = (slice(ry0 - ly0, ry1 - ly0), slice(rx0 - lx0, rx1 - lx0))
            exclude, classes = near_label_edges(around, d)[inner], around[inner]
        # x-steps: this tile's rows, from the column before it; y-steps: its columns, from the row above.
        parts = (
            ("x", slice(y0 - ry0, None), slice(None), y0, rx0),
            ("y", slice(None), slice(x0 - rx0, None), ry0, x0),
        )
        for folder in folders:
            for axis, rows, cols, fy, fx in parts:
                folder.add(
                    lum[rows, cols], fy, fx, axes=axis,
                    exclude=_part(exclude, rows, cols), classes=_part(classes, rows, cols),
                )  # fmt: skip
        if progress is not None:
            progress(i + 1, len(origins))
    return {f.period: f.result() for f in folders}
