"""The lower magnification as the condition of a cascade stage (URCDM, Imagen's super-resolution).

A cascade stage samples a level at ``s`` (``parent_scale``) times the magnification of the
level below and sees that level, upsampled to its own latent grid, concatenated to its input.
The upsampling is nearest-neighbour in the slide's global coordinates: pixel ``y`` of the
stage lies on pixel ``y // s`` of the level below, exactly where the slide pyramid's
``s``-block mean puts it. So the plumbing can be checked to the pixel, and a patch sees the
level below at the same positions whatever its offset in the patch grid; the network learns
to smooth the blocks.

Two kinds of condition (``cascade.condition``):

* ``image``: the lower level's RGB image in [-1, 1]. Each latent pixel of the stage covers
  ``f x f`` pixels (``f`` = the codec's scale factor); the condition holds the lower-level
  pixel under each of them, folded into ``3 f^2`` channels in :func:`torch.pixel_unshuffle`
  order (channel ``c f^2 + dy f + dx``).
* ``latent``: the lower level's final latent (same codec), upsampled ``s`` times.

Both are one index computation, :func:`condition_index`, used by the sampler per window
(only the lower level is held, never its upsampled copy) and by the trainer for whole tiles
(:func:`condition_field`), so training pairs and sampling see the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def condition_index(
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    sub: int,
    scale: int,
    source_shape: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """(sub*sub, B, P, Q) flat positions in the (Hs, Ws) lower level under windows.

    ``rows`` (B, P) and ``cols`` (B, Q) are latent positions of the stage; latent pixel ``r``
    covers stage pixels ``r*sub .. r*sub + sub - 1``, and stage pixel ``y`` lies on lower-level
    pixel ``(y + offset_y) // scale`` (clamped to the level: the latent may be padded past the
    slide). Index ``dy * sub + dx`` of the first axis is the sub-pixel (pixel-unshuffle order).
    """
    hs, ws = source_shape
    d = torch.arange(sub, device=rows.device)
    r = ((rows[:, None, :] * sub + d[None, :, None] + offset[0]) // scale).clamp_(0, hs - 1)  # (B, sub, P)
    c = ((cols[:, None, :] * sub + d[None, :, None] + offset[1]) // scale).clamp_(0, ws - 1)  # (B, sub, Q)
    index = r[:, :, None, :, None] * ws + c[:, None, :, None, :]  # (B, sy, sx, P, Q)
    return index.permute(1, 2, 0, 3, 4).reshape(sub * sub, *index.shape[:1], *index.shape[3:])


def gather_condition(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(C*sub*sub, B, P, Q) values of ``source`` (C, Hs*Ws) at ``index`` (sub*sub, B, P, Q)."""
    values = source.index_select(1, index.reshape(-1).to(source.device))
    return values.view(source.shape[0] * index.shape[0], *index.shape[1:])


def condition_field(
    source: torch.Tensor,
    shape: tuple[int, int],
    *,
    sub: int,
    scale: int,
    offset: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """The condition of whole (h, w) latent tiles: (B, C*sub*sub, h, w) from ``source`` (B, C, Hs, Ws)."""
    b, channels, hs, ws = source.shape
    rows = torch.arange(shape[0], device=source.device)[None]
    cols = torch.arange(shape[1], device=source.device)[None]
    index = condition_index(rows, cols, sub=sub, scale=scale, source_shape=(hs, ws), offset=offset)
    flat = source.reshape(b, channels, hs * ws)[:, :, index.reshape(-1)]  # (B, C, sub*sub*h*w)
    return flat.reshape(b, channels * sub * sub, *shape)


def block_mean(images: torch.Tensor, scale: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The lower level of (B, C, H, W) ``images``: means of ``scale`` x ``scale`` blocks.

    Blocks sit on the global grid of a tile whose first pixel is at ``offset`` (0 <= offset <
    scale): pixel ``y`` of the tile is in block ``(y + offset_y) // scale``; partial blocks at
    the edges average the pixels they have (as the slide pyramid does). Returns (B, C,
    ceil((H + oy) / s), ceil((W + ox) / s)).
    """
    _b, _c, h, w = images.shape
    oy, ox = offset
    pad = (ox, (-(w + ox)) % scale, oy, (-(h + oy)) % scale)
    sums = F.avg_pool2d(F.pad(images, pad), scale, divisor_override=1)
    ones = images.new_ones(1, 1, h, w)
    counts = F.avg_pool2d(F.pad(ones, pad), scale, divisor_override=1)
    return sums / counts
