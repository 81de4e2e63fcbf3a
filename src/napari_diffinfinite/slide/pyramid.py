"""The one pyramid builder of the slide store and of every exporter.

Level k of every pyramid we write is exactly the rounded 2**k block mean of level 0 (labels:
``level0[::2**k, ::2**k]``), with blocks aligned to the image's top-left corner; partial
blocks at the bottom/right edge average the pixels they have. One set of block-sum functions
computes it, driven two ways:

- :func:`write_tile_levels` (the slide store): tiles arrive in any order as they are decoded;
  each level-0 tile is written together with its downsample into every level at once, so
  every level fills in as tiles land and an interrupted store stays consistent.
- :func:`build_region_pyramid` (the exporters): the pyramid of a region of a source is built
  depth first over a quadtree of chunks, carrying exact block sums up, so that each chunk of
  each level is written exactly once and at most one chunk per level is held in memory.

Both need 2**k to divide the tile size, which bounds the number of levels (:data:`MAX_LEVEL`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import StoreError
from ..progress import CancelToken, check
from .constants import TILE

MAX_LEVEL = 9
"""Deepest pyramid level: 2**9 = 512 divides a 512-px tile, so every level comes from whole tiles."""


def level_shapes(shape: tuple[int, int], tile: int = TILE) -> list[tuple[int, int]]:
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


def tile_count(shapes: Sequence[tuple[int, int]], tile: int = TILE) -> int:
    """Number of ``tile`` x ``tile`` chunks in all levels of ``shapes`` ((h, w) per level)."""
    return sum(-(-h // tile) * -(-w // tile) for h, w in shapes)


def write_tile_levels(levels: Sequence[Any], y0: int, x0: int, rgb: np.ndarray) -> None:
    """Write a (3, th, tw) level-0 tile at (y0, x0) and its downsample into every level.

    ``levels`` are (3, h, w) arrays, level 0 first; y0 and x0 are multiples of the tile size
    (so 2**k divides them). Level k gets ``downsample_image(rgb, 2**k)`` at (y0 >> k, x0 >> k).
    """
    for k, level in enumerate(image_levels(rgb, len(levels))):
        ys, xs = y0 >> k, x0 >> k
        levels[k][:, ys : ys + level.shape[1], xs : xs + level.shape[2]] = level


def _region_block_counts(y0: int, x0: int, th: int, tw: int, factor: int, shape0: tuple[int, int]) -> np.ndarray:
    """Level-0 pixels in each ``factor`` block of a level chunk whose first pixel is (y0, x0)."""
    rows = np.minimum(factor, shape0[0] - (y0 + np.arange(th)) * factor)
    cols = np.minimum(factor, shape0[1] - (x0 + np.arange(tw)) * factor)
    return np.outer(rows, cols).astype(np.uint32)


def build_region_pyramid(
    image_src: Any,
    label_src: Any | None,
    region: tuple[int, int, int, int],
    image_out: Sequence[Any],
    label_out: Sequence[Any] | None,
    *,
    tile: int = TILE,
    on_chunk: Callable[[], None] | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Write the image (and label) pyramid of ``region`` = (x, y, w, h) of a source.

    ``image_src`` is a (3, H, W) array-like and ``label_src`` an (H, W) one (or None), read by
    slices; ``image_out``/``label_out`` are the level arrays to fill, shaped as
    ``level_shapes((h, w), tile)``. The chunks of the coarsest level are visited in order; each
    is made from its four children one level down, so level k is exactly what
    :func:`downsample_image` gives for 2**k. ``on_chunk`` is called after every chunk written
    (of all levels) and ``cancel`` is checked before every level-0 read.
    """
    x, y, w, h = (int(v) for v in region)
    shapes = level_shapes((h, w), tile)
    if tile % 2 ** (len(shapes) - 1):
        raise StoreError(f"a {tile}-px tile cannot hold {len(shapes)} pyramid levels; use {TILE}")
    half = tile // 2

    def write(k: int, y0: int, x0: int, rgb: np.ndarray, labels: np.ndarray | None) -> None:
        th, tw = rgb.shape[-2:]
        image_out[k][:, y0 : y0 + th, x0 : x0 + tw] = rgb
        if label_out is not None and labels is not None:
            label_out[k][y0 : y0 + th, x0 : x0 + tw] = labels
        if on_chunk is not None:
            on_chunk()

    def visit(k: int, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray | None]:
        hk, wk = shapes[k]
        y0, x0 = cy * tile, cx * tile
        th, tw = min(tile, hk - y0), min(tile, wk - x0)
        if k == 0:
            check(cancel)
            ys, xs = y + y0, x + x0
            rgb = np.asarray(image_src[:, ys : ys + th, xs : xs + tw], dtype=np.uint8)
            labels = None
            if label_src is not None:
                labels = np.asarray(label_src[ys : ys + th, xs : xs + tw], dtype=np.uint8)
            write(0, y0, x0, rgb, labels)
            return rgb, labels
        sums = np.zeros((3, th, tw), dtype=np.uint32)
        labels = np.zeros((th, tw), dtype=np.uint8) if label_src is not None else None
        child_h, child_w = shapes[k - 1]
        for dy in (0, 1):
            for dx in (0, 1):
                ccy, ccx = 2 * cy + dy, 2 * cx + dx
                if ccy * tile >= child_h or ccx * tile >= child_w:
                    continue
                child, child_labels = visit(k - 1, ccy, ccx)
                part = _block_sums(child, 2)
                oy, ox = dy * half, dx * half
                sums[:, oy : oy + part.shape[1], ox : ox + part.shape[2]] = part
                if labels is not None and child_labels is not None:
                    sub = downsample_labels(child_labels, 2)
                    labels[oy : oy + sub.shape[0], ox : ox + sub.shape[1]] = sub
        counts = _region_block_counts(y0, x0, th, tw, 2**k, shapes[0])
        write(k, y0, x0, _rounded_mean(sums, counts), labels)
        return sums, labels

    top = len(shapes) - 1
    top_h, top_w = shapes[top]
    for cy in range(-(-top_h // tile)):
        for cx in range(-(-top_w // tile)):
            visit(top, cy, cx)
