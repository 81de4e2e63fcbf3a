"""Patch-FID crops: random crops at random scales, at matched positions in real and synthetic slides.

Patch-FID (Chai et al. 2022, "Any-resolution training for high-resolution image
synthesis"; used by the URCDM report for ultra-resolution images) compares crops taken at
many scales, so that both fine detail (small crops at full resolution) and slide-level
structure (large crops, shrunk) count. Here:

* ``count`` crop specs are drawn once from ``seed``: a side length ``s`` in level-0 pixels,
  log-uniform between ``size`` and ``max_scale`` x ``size``, and a position given as a
  fraction of the slide's free range, ``(fy, fx)`` in [0, 1).
* The *same* specs are applied to every slide of both sets (matched positions and scales);
  with several slides per set, spec ``i`` goes to slide ``i mod n``.
* Each crop is read from the pyramid level whose downsample is the largest not above
  ``s / size`` and resized (box filter) to ``size`` x ``size``, so memory per crop is
  bounded whatever the scale. A spec larger than a slide is clamped to the slide.

Glass is kept: Patch-FID measures the whole image, as in the original.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .distances import EvaluationError
from .tiles import SlideSource

__all__ = ["CropSpec", "crop_specs", "matched_crops"]


@dataclass(frozen=True)
class CropSpec:
    side: int  # crop side in level-0 pixels
    fy: float  # top edge as a fraction of the free range (slide height - side)
    fx: float

    def to_dict(self) -> dict:
        return {"side": self.side, "fy": round(self.fy, 6), "fx": round(self.fx, 6)}


def crop_specs(count: int, size: int, max_scale: float = 8.0, seed: int = 0) -> list[CropSpec]:
    """``count`` crop specs with sides log-uniform in [size, max_scale * size], reproducible for ``seed``."""
    if count < 2 or max_scale < 1:
        raise EvaluationError(f"Patch-FID needs at least 2 crops and max_scale >= 1, got {count} and {max_scale}")
    rng = np.random.default_rng([seed, 0x9A7C])
    sides = np.exp(rng.uniform(np.log(size), np.log(size * max_scale), count)).round().astype(int)
    fy, fx = rng.random(count), rng.random(count)
    return [CropSpec(int(s), float(a), float(b)) for s, a, b in zip(sides, fy, fx)]


def _crop(source: SlideSource, spec: CropSpec, size: int) -> np.ndarray:
    h0, w0 = source.level_shapes[0]
    side = min(spec.side, h0, w0)
    y0 = int(spec.fy * (h0 - side))
    x0 = int(spec.fx * (w0 - side))
    wanted = side / size
    level = 0
    for k, (h, _w) in enumerate(source.level_shapes):
        if h0 / h <= wanted + 1e-9:
            level = k
    h, w = source.level_shapes[level]
    sy, sx = h / h0, w / w0
    ly0, lx0 = int(y0 * sy), int(x0 * sx)
    ly1, lx1 = min(max(int(round((y0 + side) * sy)), ly0 + 1), h), min(max(int(round((x0 + side) * sx)), lx0 + 1), w)
    rgb = source.read(level, ly0, ly1, lx0, lx1)
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX))
    return rgb


def matched_crops(sources: Sequence[SlideSource], specs: Sequence[CropSpec], size: int) -> Iterator[np.ndarray]:
    """The crops of ``specs`` from the slides (spec i from slide i mod n), each (size, size, 3) uint8."""
    slides = [s for s in sources if isinstance(s, SlideSource)]
    if not slides:
        raise EvaluationError("Patch-FID needs slides (stores or real slides), not folders of tiles")
    for i, spec in enumerate(specs):
        yield _crop(slides[i % len(slides)], spec, size)
