"""Pyramid geometry and downsampling for the slide store.

Every pyramid level is computed straight from level-0 tiles (never from the level above), so
that level k is exactly the 2**k block mean of level 0 whatever order the tiles arrive in.
That requires 2**k to divide the tile size, which bounds the number of levels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import StoreError

MAX_LEVEL = 9
"""Deepest pyramid level: 2**9 = 512 divides a 512-px tile, so every level comes from whole tiles."""


def level_shapes(shape: tuple[int, int], tile: int = 512) -> list[tuple[int, int]]:
    """Return the (h, w) of each pyramid level of a slide of ``shape`` (level 0 first).

    Levels halve (rounding up) while the larger side of the last level exceeds ``tile``.
    Raises StoreError when the slide needs more than ``MAX_LEVEL + 1`` levels.
    """
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise StoreError(f"a slide must be at least 1 x 1 px, got {h} x {w}")
    if tile <= 0:
        raise StoreError(f"the tile size must be positive, got {tile}")
    shapes = [(h, w)]
    while max(shapes[-1]) > tile:
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
        if len(shapes) > MAX_LEVEL + 1:
            limit = tile * 2**MAX_LEVEL
            raise StoreError(
                f"a {h} x {w} px slide is too large: at most {limit} px on a side is supported "
                f"({MAX_LEVEL + 1} pyramid levels of {tile}-px tiles); choose a smaller slide size"
            )
    return shapes


def _block_sums(block: np.ndarray, factor: int) -> np.ndarray:
    """Sum (c, h, w) over ``factor`` x ``factor`` blocks of the last two axes (partial at edges)."""
    h, w = block.shape[-2:]
    out = np.add.reduceat(block, np.arange(0, h, factor), axis=-2, dtype=np.uint32)
    return np.add.reduceat(out, np.arange(0, w, factor), axis=-1, dtype=np.uint32)


def _block_counts(h: int, w: int, factor: int) -> np.ndarray:
    """Number of pixels in each ``factor`` x ``factor`` block of an (h, w) image."""
    rows = np.minimum(factor, h - np.arange(0, h, factor))
    cols = np.minimum(factor, w - np.arange(0, w, factor))
    return np.outer(rows, cols).astype(np.uint32)


def _rounded_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return ((sums + counts // 2) // counts).astype(np.uint8)


def downsample_image(block: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample a (3, h, w) uint8 image by ``factor``.

    Returns (3, ceil(h/f), ceil(w/f)) uint8. Partial blocks at the bottom/right edge average
    the pixels they have; means round half up, ``(sum + n // 2) // n``.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return np.array(block, dtype=np.uint8, copy=True)
    h, w = block.shape[-2:]
    return _rounded_mean(_block_sums(block, factor), _block_counts(h, w, factor))


def downsample_labels(block: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour downsample of a label image: pixel (i, j) <- block[i*f, j*f]."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return block[..., ::factor, ::factor]


def image_levels(block: np.ndarray, num_levels: int) -> Iterator[np.ndarray]:
    """Yield ``downsample_image(block, 2**k)`` for k = 0 .. num_levels - 1.

    Block sums nest (a 2**k block is four 2**(k-1) blocks, partial ones at the edges too), so
    each level's sums come from the previous level's sums; only the final rounding is per level.
    This is exact and much cheaper than downsampling the tile afresh for every level.
    """
    yield block
    sums = block
    counts = np.ones(block.shape[-2:], dtype=np.uint8)
    for _ in range(1, num_levels):
        sums = _block_sums(sums, 2)  # accumulates in uint32 from the first level on
        counts = _block_sums(counts, 2)
        yield _rounded_mean(sums, counts)
