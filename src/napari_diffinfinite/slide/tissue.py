"""Tissue-layout masks from real slides, to condition a synthetic twin with the same layout.

Method (deliberately simple, documented in ``docs/interop.md``):

1. **Low resolution.** Read the smallest pyramid level whose longer side is at least
   ``max_side`` pixels and shrink it (box filter) so the longer side is ``max_side``.
   Memory is bounded by that one small level, whatever the slide size.
2. **Optical density.** Per pixel, ``OD = -log10((I + 1) / 256)`` averaged over R, G, B.
   Glass is bright (OD near 0); stained tissue absorbs light (OD roughly 0.1 to 1.5).
3. **Smoothing.** Gaussian blur of the OD image (``sigma`` pixels), so that pale
   stroma between nuclei is not split from the tissue around it.
4. **Threshold.** The triangle method on the smoothed OD histogram: background is one
   tall, narrow peak at low OD and tissue a long tail, which is the shape the triangle
   method is made for (Otsu splits light from dark tissue instead). The threshold is
   never below ``min_od``, so that a slide of almost only glass does not turn dust and
   noise into tissue.
5. **Clean-up.** Morphological closing (disk of ``closing_radius``), then removal of
   tissue pieces and filling of holes smaller than ``min_area`` pixels.

Known limits: pen marks, bubbles and folds count as tissue; very pale tissue (fat) may
count as background; a slide that is all tissue still gets a threshold inside the tissue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import MaskError
from .openslide_reader import RealSlide, open_real_slide

__all__ = [
    "TissueMask",
    "optical_density",
    "remove_small_pieces",
    "tissue_mask_from_rgb",
    "tissue_mask",
    "tissue_layout_source",
]


@dataclass
class TissueMask:
    """A low-resolution tissue mask of a slide.

    ``mask`` is boolean (h, w), True on tissue; ``slide_shape`` the level-0 (H, W) it
    covers, so one mask pixel spans ``H / h`` x ``W / w`` level-0 pixels; ``threshold``
    the optical density used.
    """

    mask: np.ndarray
    slide_shape: tuple[int, int]
    threshold: float

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along (y, x)."""
        return (
            self.slide_shape[0] / self.mask.shape[0],
            self.slide_shape[1] / self.mask.shape[1],
        )

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean())

    def to_canvas(self, tissue_label: int, background_label: int = 0) -> np.ndarray:
        """A uint8 label canvas: ``tissue_label`` on tissue, ``background_label`` elsewhere.

        Label 0 means "unknown" to the image model (unconditional), so pass the model's
        background/glass class as ``background_label`` if it has one.
        """
        for name, value in (("tissue_label", tissue_label), ("background_label", background_label)):
            if not 0 <= int(value) <= 255:
                raise MaskError(f"{name} must be a label between 0 and 255, got {value}")
        return np.where(self.mask, np.uint8(tissue_label), np.uint8(background_label))


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over R, G, B of an (h, w, 3) uint8 image, as float32."""
    table = -np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
    return table.astype(np.float32)[rgb].mean(axis=-1)


def _triangle_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The triangle threshold, computed on the side of the histogram's long tail."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    peak = int(np.argmax(hist))
    nonzero = np.flatnonzero(hist)
    far = int(nonzero[-1]) if (nonzero[-1] - peak) >= (peak - nonzero[0]) else int(nonzero[0])
    if far == peak:
        return float(edges[peak + 1])
    idx = np.arange(min(peak, far), max(peak, far) + 1)
    # Distance of each histogram point to the line from the peak to the tail's end.
    x0, y0, x1, y1 = peak, hist[peak], far, hist[far]
    dist = np.abs((y1 - y0) * idx - (x1 - x0) * hist[idx] + x1 * y0 - y1 * x0)
    best = int(idx[np.argmax(dist)])
    return float(edges[best + 1] if far > peak else edges[best])


def remove_small_pieces(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove True components of fewer than ``min_area`` pixels (8-connected)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    *,
    sigma: float = 1.0,
    min_od: float = 0.03,
    closing_radius: int = 2,
    min_area: int = 64,
) -> tuple[np.ndarray, float]:
    """Tissue (True) vs background (False) of a low-resolution RGB image.

    Returns the mask and the optical density threshold; see the module docstring for
    the method and what each parameter does.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise MaskError(f"expected an (h, w, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    od = optical_density(rgb)
    if sigma > 0:
        od = ndimage.gaussian_filter(od, sigma, mode="nearest")
    threshold = max(_triangle_threshold(od), min_od)
    mask = od > threshold
    if closing_radius > 0:
        r = closing_radius
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = (yy * yy + xx * xx) <= r * r
        # Pad so that tissue touching the border is not eroded by the closing.
        padded = np.pad(mask, r, mode="edge")
        mask = ndimage.binary_closing(padded, structure=disk)[r:-r, r:-r]
    if min_area > 1:
        mask = remove_small_pieces(mask, min_area)
        mask = ~remove_small_pieces(~mask, min_area)
    return mask, float(threshold)


#: a level of more pixels than this is read in strips of about this many pixels
STRIP_PIXELS = 4096 * 4096
#: a level of more pixels than this is not read for a tissue mask at all (a 32k x 32k slide
#: without a pyramid, or a tiny file claiming to be one)
MAX_LEVEL_PIXELS = 32768 * 32768


def _shrunk_by_strips(slide: RealSlide, level: int, factor: int) -> np.ndarray:
    """Level ``level`` shrunk by ``factor`` (box mean), read in strips of rows: the memory is one
    strip plus the result, not the level (a slide whose smallest level is 20000 px wide)."""
    h, w = slide.level_shapes[level]
    h, w = h // factor * factor, w // factor * factor
    rows = max(factor, STRIP_PIXELS // max(w, 1) // factor * factor)
    out = np.empty((h // factor, w // factor, 3), np.uint8)
    for y0 in range(0, h, rows):
        y1 = min(y0 + rows, h)
        strip = slide.read_region(level, y0, y1, 0, w).astype(np.float32)
        shrunk = strip.reshape((y1 - y0) // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
        out[y0 // factor : y1 // factor] = np.rint(shrunk).astype(np.uint8)
    return out


def _low_resolution_rgb(slide: RealSlide, max_side: int) -> np.ndarray:
    """The slide shrunk so that its longer side is ``max_side`` (never enlarged)."""
    h0, w0 = slide.shape
    scale = max(h0, w0) / max_side
    out_h, out_w = max(1, round(h0 / scale)), max(1, round(w0 / scale))
    if scale <= 1:
        out_h, out_w = h0, w0
    level = 0
    for k, (h, w) in enumerate(slide.level_shapes):
        if h >= out_h and w >= out_w:
            level = k
    h, w = slide.level_shapes[level]
    if h * w > MAX_LEVEL_PIXELS:
        raise MaskError(
            f"the slide has no pyramid level near {max_side} px (the smallest is {w} x {h} px); reading it "
            "whole would take too long: make a pyramid first (e.g. vips tiffsave IN OUT.tif --tile --pyramid)"
        )
    if h * w > STRIP_PIXELS:  # a slide without a small level: shrink strip by strip, memory bounded
        rgb = _shrunk_by_strips(slide, level, max(1, min(h // out_h, w // out_w)))
        h, w = rgb.shape[:2]
    else:
        rgb = slide.read_region(level, 0, h, 0, w)
    if (h, w) != (out_h, out_w):
        rgb = np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BOX))
    return rgb


def tissue_mask(
    slide: str | os.PathLike | RealSlide,
    *,
    max_side: int = 1024,
    sigma: float = 1.0,
    min_od: float = 0.03,
    closing_radius: int = 2,
    min_area: int = 64,
) -> TissueMask:
    """Tissue-layout mask of a real slide at low resolution (longer side ``max_side``).

    ``slide`` is a path OpenSlide can open or an open :class:`RealSlide`. The defaults
    suit ``max_side=1024``; scale ``sigma``, ``closing_radius`` and ``min_area`` with it.
    """
    if max_side < 16:
        raise MaskError(f"max_side must be at least 16 pixels, got {max_side}")
    opened = not isinstance(slide, RealSlide)
    real = open_real_slide(slide) if opened else slide
    try:
        rgb = _low_resolution_rgb(real, max_side)
        mask, threshold = tissue_mask_from_rgb(
            rgb, sigma=sigma, min_od=min_od, closing_radius=closing_radius, min_area=min_area
        )
        return TissueMask(mask=mask, slide_shape=real.shape, threshold=threshold)
    finally:
        if opened:
            real.close()


def tissue_layout_source(
    slide: str | os.PathLike | RealSlide,
    *,
    tissue_label: int,
    background_label: int = 0,
    slide_shape: tuple[int, int] | None = None,
    max_side: int = 1024,
):
    """A :class:`~napari_diffinfinite.slide.masks.CanvasMask` with a real slide's layout.

    The canvas is the tissue mask labelled with ``tissue_label``/``background_label``;
    it covers ``slide_shape`` (default: the real slide's level-0 size), so the synthetic
    twin has the same layout at the same (or a chosen) size.
    """
    from .masks import CanvasMask

    mask = tissue_mask(slide, max_side=max_side)
    canvas = mask.to_canvas(tissue_label, background_label)
    return CanvasMask(canvas, tuple(slide_shape) if slide_shape else mask.slide_shape)
