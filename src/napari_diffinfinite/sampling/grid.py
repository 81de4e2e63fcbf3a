"""The shifted patch grid of one sampling step, with one owner per latent pixel.

Each step, the grid of ``patch`` x ``patch`` cells is shifted by a random offset. Every
cell becomes one patch evaluation: the network sees a full ``patch`` window around the
cell (moved inward where the cell touches the canvas edge) and only the cell's pixels are
written. The cells tile the canvas, so every latent pixel advances exactly once per step,
and the patch borders move every step, so no seam stays in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Patch:
    """A network window (``y``, ``x``, side ``size``) and the cell it owns (absolute coords)."""

    y: int
    x: int
    size: int
    own_y0: int
    own_y1: int
    own_x0: int
    own_x1: int

    @property
    def own_slices(self) -> tuple[slice, slice]:
        """The owned cell relative to the window."""
        return slice(self.own_y0 - self.y, self.own_y1 - self.y), slice(self.own_x0 - self.x, self.own_x1 - self.x)

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.size), slice(self.x, self.x + self.size)


def _cells(length: int, patch: int, offset: int) -> list[tuple[int, int, int]]:
    """(window start, cell start, cell end) along one axis."""
    if length < patch:
        raise ValueError(f"canvas side {length} is smaller than the patch {patch}; pad the latent first")
    cells = []
    start = offset - patch if offset else 0
    while start < length:
        lo, hi = max(start, 0), min(start + patch, length)
        window = min(max(start, 0), length - patch)
        if cells and cells[-1][0] == window:
            # two cells moved onto the same window (a canvas side of one patch): one evaluation
            cells[-1] = (window, cells[-1][1], hi)
        else:
            cells.append((window, lo, hi))
        start += patch
    return cells


def step_patches(shape: tuple[int, int], patch: int, offset: tuple[int, int]) -> list[Patch]:
    """All patches of a step on a canvas of ``shape`` with the grid shifted by ``offset``."""
    rows = _cells(shape[0], patch, offset[0] % patch)
    cols = _cells(shape[1], patch, offset[1] % patch)
    return [Patch(wy, wx, patch, y0, y1, x0, x1) for wy, y0, y1 in rows for wx, x0, x1 in cols]


def ideal_patches(shape: tuple[int, int], patch: int) -> float:
    """H*W/P^2: the patch evaluations a step would need without any border overhead."""
    return shape[0] * shape[1] / patch**2
