"""Simple, documented distances between a synthetic image and the real one it imitates.

They are not FID (a few images cannot estimate it) but statistics that tell tissue from
noise and flat colour, measured over the same label map:

* :func:`colour_distance`: mean over R, G, B of the 1-D Wasserstein (earth mover's)
  distance between the two images' pixel-value distributions, in 8-bit grey levels.
  0 = the same colour histograms.
* :func:`texture_distance`: the Wasserstein distance between the distributions of the
  gradient magnitude (Sobel, on the luminance) in grey levels per pixel: how much edge
  structure (nuclei, fibres) there is and how sharp it is. 0 = the same distribution.
* :func:`class_colour_error`: for every label, the Euclidean distance between the mean RGB
  of its pixels in the two images, averaged over labels (weighted by their pixel counts):
  does the image follow the layout (dark purple epidermis where the map says epidermis)?
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _wasserstein_levels(
    a: np.ndarray, b: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0, 256)
) -> float:
    """W1 distance between two samples of values, via their histograms' CDFs."""
    ha, edges = np.histogram(a, bins=bins, range=value_range)
    hb, _ = np.histogram(b, bins=bins, range=value_range)
    ca = np.cumsum(ha) / max(1, ha.sum())
    cb = np.cumsum(hb) / max(1, hb.sum())
    return float(np.abs(ca - cb).sum() * (edges[1] - edges[0]))


def colour_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Mean per-channel Wasserstein distance of (h, w, 3) uint8 images (grey levels)."""
    return float(np.mean([_wasserstein_levels(real[..., c].ravel(), fake[..., c].ravel()) for c in range(3)]))


def gradient_magnitude(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1)) / 8.0


def texture_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Wasserstein distance between gradient-magnitude distributions (grey levels / px)."""
    return _wasserstein_levels(
        gradient_magnitude(real).ravel(), gradient_magnitude(fake).ravel(), bins=512, value_range=(0, 256)
    )


def class_colour_error(real: np.ndarray, fake: np.ndarray, labels: np.ndarray) -> float:
    """Pixel-weighted mean over labels of |mean RGB(real) - mean RGB(fake)| (grey levels)."""
    total, weight = 0.0, 0
    for value in np.unique(labels):
        where = labels == value
        n = int(where.sum())
        diff = real[where].reshape(-1, 3).mean(axis=0) - fake[where].reshape(-1, 3).mean(axis=0)
        total += float(np.linalg.norm(diff)) * n
        weight += n
    return total / max(1, weight)


def compare(real: np.ndarray, fake: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All three distances of :mod:`this module <napari_diffinfinite.training.metrics>`."""
    return {
        "colour_distance": round(colour_distance(real, fake), 3),
        "texture_distance": round(texture_distance(real, fake), 3),
        "class_colour_error": round(class_colour_error(real, fake, labels), 3),
        "mean_gradient": round(float(gradient_magnitude(fake).mean()), 3),
    }
