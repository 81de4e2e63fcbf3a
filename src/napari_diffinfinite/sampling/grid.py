"""The shifted patch grid of one sampling step, with one owner per latent pixel.

Each step, a grid of cells is shifted by a random offset. Every cell becomes one patch
evaluation: the network sees a ``patch`` x ``patch`` window around the cell (moved inward
where the cell touches the canvas edge) and only the cell's pixels are written. The cells
tile the canvas, so every latent pixel advances exactly once per step, and the cell borders
move every step, so no seam stays in one place.

Without context the cells are as large as the window (``patch``), and a cell's border is
its window's border, where the network sees nothing beyond. With ``context`` m > 0 the
cells are ``patch - 2m`` wide and sit in the middle of their windows, so the network sees
m latent pixels around every written pixel (the sampler uses this at late, low-noise
steps, where a border denoised without context would stay visible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class StepGrid:
    """All patches of a step as arrays (one entry per patch, absolute latent coordinates).

    Row-major over the grid: patches ``i * cols ... (i + 1) * cols - 1`` share a row of cells.
    """

    patch: int
    window_y: np.ndarray  # (N,) window top
    window_x: np.ndarray  # (N,) window left
    own_y0: np.ndarray  # (N,) owned cell, [own_y0, own_y1) x [own_x0, own_x1)
    own_y1: np.ndarray
    own_x0: np.ndarray
    own_x1: np.ndarray

    def __len__(self) -> int:
        return len(self.window_y)

    def patches(self) -> list[Patch]:
        return [
            Patch(int(wy), int(wx), self.patch, int(y0), int(y1), int(x0), int(x1))
            for wy, wx, y0, y1, x0, x1 in zip(
                self.window_y, self.window_x, self.own_y0, self.own_y1, self.own_x0, self.own_x1
            )
        ]


def _cells(length: int, patch: int, offset: int, context: int = 0) -> list[tuple[int, int, int]]:
    """(window start, cell start, cell end) along one axis; cells of ``patch - 2 * context``."""
    if length < patch:
        raise ValueError(f"canvas side {length} is smaller than the patch {patch}; pad the latent first")
    cell = patch - 2 * context
    if cell < 1:
        raise ValueError(f"context {context} leaves no cell inside a patch of {patch}")
    cells: list[tuple[int, int, int]] = []
    start = offset - cell if offset else 0
    while start < length:
        lo, hi = max(start, 0), min(start + cell, length)
        window = min(max(lo - context, 0), length - patch)
        if cells and cells[-1][0] == window:
            # two cells fall in the same window (near a canvas edge): one evaluation
            cells[-1] = (window, cells[-1][1], hi)
        else:
            cells.append((window, lo, hi))
        start += cell
    return cells


def step_grid(shape: tuple[int, int], patch: int, offset: tuple[int, int], context: int = 0) -> StepGrid:
    """The patches of a step on a canvas of ``shape`` with the grid shifted by ``offset``."""
    cell = patch - 2 * context
    rows = np.array(_cells(shape[0], patch, offset[0] % cell, context), np.int64)
    cols = np.array(_cells(shape[1], patch, offset[1] % cell, context), np.int64)
    r = np.repeat(rows, len(cols), axis=0)
    c = np.tile(cols, (len(rows), 1))
    return StepGrid(patch, r[:, 0], c[:, 0], r[:, 1], r[:, 2], c[:, 1], c[:, 2])


def count_patches(shape: tuple[int, int], patch: int, offset: tuple[int, int], context: int = 0) -> int:
    """``len(step_grid(...))`` without building the grid: rows x columns of cells, so that a
    time estimate for a huge slide costs two 1-D passes, not an array of every patch."""
    cell = patch - 2 * context
    return _count_cells(shape[0], patch, offset[0] % cell, context) * _count_cells(
        shape[1], patch, offset[1] % cell, context
    )


def _count_cells(length: int, patch: int, offset: int, context: int) -> int:
    """``len(_cells(...))`` in numpy: the cells' windows, where neighbours sharing one count once."""
    if length < patch:
        raise ValueError(f"canvas side {length} is smaller than the patch {patch}; pad the latent first")
    cell = patch - 2 * context
    starts = np.arange(offset - cell if offset else 0, length, cell)
    windows = np.clip(np.maximum(starts, 0) - context, 0, length - patch)
    return int(1 + np.count_nonzero(np.diff(windows)))


def step_patches(shape: tuple[int, int], patch: int, offset: tuple[int, int], context: int = 0) -> list[Patch]:
    """All patches of a step on a canvas of ``shape`` with the grid shifted by ``offset``."""
    return step_grid(shape, patch, offset, context).patches()


def ideal_patches(shape: tuple[int, int], patch: int) -> float:
    """H*W/P^2: the patch evaluations a step would need without any border overhead."""
    return shape[0] * shape[1] / patch**2
