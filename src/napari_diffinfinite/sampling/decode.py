"""Seam-free tiled decoding of a large latent into 512 px store tiles.

Each store tile (``tile`` pixels, ``tile // scale`` latent pixels) is decoded from a latent
window that extends ``margin`` latent pixels into its neighbours. Neighbouring windows
overlap by ``2 * margin`` latent pixels; across the middle half of each overlap the two
decodings are cross-faded with linear weights that sum to one (the outer half is context
that keeps the decoder's view of the edge away from the output), so no tile border shows. Tile rows
are decoded in order and a row of store tiles is written as soon as the rows below it
have contributed, which keeps memory to three rows of tiles and lets the viewer fill in
progressively.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report


def _ramp(length: int, scale: int, tile_latent: int, index: int, count: int, margin: int, start: int) -> np.ndarray:
    """1-D weights of window ``index`` over its pixels [start*scale, (start+length)*scale).

    The cross-fade spans ``margin`` latent pixels centred on each tile border, so the outer
    ``margin / 2`` of every window is context only and never reaches the output.
    """
    px = (np.arange(length * scale) + 0.5) / scale + start  # pixel centres in latent units
    half = margin / 2
    w = np.ones_like(px)
    if margin and index > 0:
        border = index * tile_latent
        w *= np.clip((px - (border - half)) / margin, 0, 1)
    if margin and index < count - 1:
        border = (index + 1) * tile_latent
        w *= np.clip(((border + half) - px) / margin, 0, 1)
    return w.astype(np.float32)


def _window(index: int, count: int, tile_latent: int, margin: int, length: int) -> tuple[int, int]:
    lo = max(0, index * tile_latent - margin)
    hi = min(length, (index + 1) * tile_latent + margin)
    return lo, hi


def decode_tiles(
    latent: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: int,
    image_shape: tuple[int, int],
    write: Callable[[int, int, np.ndarray], None],
    tile: int = 512,
    margin: int = 8,
    first_row: int = 0,
    last_row: int | None = None,
    latent_origin: int = 0,
    latent_height: int | None = None,
    on_row_done: Callable[[int], None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Decode ``latent`` (C, h, w) tile by tile and ``write(y0, x0, rgb)`` each store tile.

    ``decode`` maps a (1, C, h', w') latent to a (1, 3, h'*scale, w'*scale) image in [0, 1].
    ``image_shape`` (H, W) crops the decoded canvas to the slide. ``first_row`` resumes at a
    row of store tiles (rows before it are not written again); ``last_row`` stops before that
    row. ``latent`` may hold only rows ``latent_origin`` onwards of a latent of ``latent_height``
    rows (one band of a latent split over processes; it must cover the rows the tiles read), so
    that a band decodes exactly as the whole latent would. ``on_row_done(r)`` is called
    after row ``r`` of store tiles has been written.
    """
    if tile % scale:
        raise ValueError(f"tile {tile} must be a multiple of the codec's scale factor {scale}")
    if margin > tile // scale:
        # the cross-fade spans ``margin`` latent pixels around each border: wider than a tile,
        # the weights of neighbouring windows would no longer sum to one
        raise ValueError(f"margin {margin} is wider than a tile ({tile // scale} latent pixels); use larger tiles")
    height, width = image_shape
    tl = tile // scale
    lat_h, lat_w = latent.shape[-2:]
    lat_h = latent_height if latent_height is not None else lat_h
    cols = -(-width // tile)
    rows = -(-height // tile) if last_row is None else min(last_row, -(-height // tile))
    if margin == 0:
        margin_rows = 0
    else:
        margin_rows = 1
    acc: dict[int, list[np.ndarray]] = {}

    def tile_shape(r: int, c: int) -> tuple[int, int]:
        return min(tile, height - r * tile), min(tile, width - c * tile)

    def flush(r: int) -> None:
        for c, buffer in enumerate(acc.pop(r)):
            th, tw = tile_shape(r, c)
            rgb = np.clip(np.rint(buffer[:, :th, :tw] * 255.0), 0, 255).astype(np.uint8)
            write(r * tile, c * tile, rgb)
        if on_row_done is not None:
            on_row_done(r)

    # latent tile rows/cols cover the latent, which may extend past the slide
    lat_rows, lat_cols = -(-lat_h // tl), -(-lat_w // tl)
    start_row = max(0, first_row - margin_rows)
    total = (min(rows, lat_rows) - start_row) * lat_cols
    done = 0
    for r in range(start_row, min(rows + margin_rows, lat_rows)):
        y0, y1 = _window(r, lat_rows, tl, margin, lat_h)
        wy = _ramp(y1 - y0, scale, tl, r, lat_rows, margin, y0)
        for c in range(lat_cols):
            check(cancel)
            x0, x1 = _window(c, lat_cols, tl, margin, lat_w)
            wx = _ramp(x1 - x0, scale, tl, c, lat_cols, margin, x0)
            image = decode(latent[None, :, y0 - latent_origin : y1 - latent_origin, x0:x1])[0].float().cpu().numpy()
            weighted = image * wy[None, :, None] * wx[None, None, :]
            # scatter the window into the store tiles it overlaps
            py0, px0 = y0 * scale, x0 * scale
            for tr in range(py0 // tile, min(rows, -(-(y1 * scale) // tile))):
                if tr < first_row:
                    continue
                for tc in range(px0 // tile, min(cols, -(-(x1 * scale) // tile))):
                    row = acc.setdefault(tr, [np.zeros((3, tile, tile), np.float32) for _ in range(cols)])
                    ty0, tx0 = tr * tile, tc * tile
                    sy0, sy1 = max(ty0, py0), min(ty0 + tile, y1 * scale)
                    sx0, sx1 = max(tx0, px0), min(tx0 + tile, x1 * scale)
                    row[tc][:, sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0] += weighted[
                        :, sy0 - py0 : sy1 - py0, sx0 - px0 : sx1 - px0
                    ]
            done += 1
            report(
                progress, ProgressEvent("decode", min(done, total), max(total, 1), f"decoding tile row {r + 1}/{rows}")
            )
        # a store row is final once every window that overlaps it has been decoded
        for ready in sorted(k for k in acc if k <= r - margin_rows):
            flush(ready)
    for ready in sorted(acc):
        flush(ready)
