"""Augmentations that suit histology: the eight symmetries of the square.

A tissue section has no preferred orientation, so horizontal/vertical flips and
90-degree rotations (the dihedral group D4) make plausible new tiles without touching
colours or texture statistics. They are applied identically to a tile and its label map,
so labels stay on the pixels they describe. Colour jitter is deliberately absent: stain
colour is what the model should learn.
"""

from __future__ import annotations

import numpy as np

NUM_SYMMETRIES = 8


def dihedral(array: np.ndarray, index: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Symmetry ``index`` (0..7) of the square applied to ``array`` over ``axes``.

    ``index`` = 4 * flip + rotations: rotate by ``index % 4`` quarter turns, then flip
    vertically when ``index >= 4``. Index 0 is the identity.
    """
    if not 0 <= index < NUM_SYMMETRIES:
        raise ValueError(f"symmetry index must be in 0..7, got {index}")
    out = np.rot90(array, k=index % 4, axes=axes)
    if index >= 4:
        out = np.flip(out, axis=axes[0])
    return np.ascontiguousarray(out)


def random_dihedral(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip/rotation of an (h, w, 3) tile and its (h, w) label map."""
    index = int(rng.integers(NUM_SYMMETRIES))
    return dihedral(image, index), dihedral(labels, index)
