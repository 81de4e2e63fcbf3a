"""Privacy of synthetic tiles: do they copy the training patients' tiles?

Both tests work on image features (the same extractor as FID) of three sets: the model's
**training** tiles, **held-out** real tiles of the same kind that the model never saw, and
the **synthetic** tiles.

* **Authenticity** (Alaa et al. 2022, "How faithful is your synthetic data?"): a synthetic
  feature is *unauthentic* when it is closer to its nearest training feature than that
  training feature is to its own nearest training neighbour, i.e. it sits inside the gap
  around a training sample where only a copy would fall. The score is the fraction of
  authentic synthetic tiles (1.0 = no tile looks copied); the indices of unauthentic ones
  are returned so they can be looked at.
* **C_T** (Meehan, Chaudhuri & Dasgupta 2020, "A non-parametric test to detect
  data-copying"): the feature space is cut into ``cells`` cells by k-means on the training
  features; in each cell the distances of synthetic features to their nearest training
  feature are compared with those of held-out features by a Mann-Whitney U test, as a
  Z-score; C_T is the average Z over cells, weighted by each cell's share of held-out
  tiles, over cells holding at least ``min_cell_fraction`` of the synthetic tiles.
  C_T << 0: synthetic tiles are closer to training tiles than new real tiles are (copying);
  C_T about 0: as close as new real data; C_T >> 0: farther (underfitting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans2, vq
from scipy.stats import mannwhitneyu

from .distances import EvaluationError, _features, kth_neighbour_radii, nearest_neighbours

__all__ = ["AuthenticityResult", "authenticity", "CTResult", "ct_score"]


@dataclass(frozen=True)
class AuthenticityResult:
    score: float  # fraction of authentic synthetic tiles
    unauthentic: np.ndarray = field(repr=False)  # indices of synthetic tiles that look copied
    nearest_training: np.ndarray = field(repr=False)  # index of each synthetic tile's nearest training tile

    def to_dict(self) -> dict:
        return {"authenticity": round(self.score, 6), "unauthentic_count": int(self.unauthentic.size)}


def authenticity(training, synthetic, *, device: str = "cpu") -> AuthenticityResult:
    """Authenticity of synthetic features against training features (Alaa et al. 2022)."""
    train = _features(training, "training", 2)
    fake = _features(synthetic, "synthetic", 1)
    radius = kth_neighbour_radii(train, 1, device=device)  # each training tile's gap to its nearest neighbour
    dist, index = nearest_neighbours(fake, train, 1, device=device)
    dist, index = dist[:, 0], index[:, 0]
    copied = dist < radius[index]
    # An exact copy has distance 0: it is unauthentic unless its training tile has an exact duplicate too.
    copied |= dist == 0
    return AuthenticityResult(
        score=float(1 - copied.mean()), unauthentic=np.flatnonzero(copied), nearest_training=index
    )


@dataclass(frozen=True)
class CTResult:
    ct: float
    cell_z: dict[int, float]  # Z-score of each cell used
    cells_used: int
    cells: int

    def to_dict(self) -> dict:
        return {"ct": round(self.ct, 6), "cells_used": self.cells_used, "cells": self.cells}


def ct_score(
    training,
    held_out,
    synthetic,
    *,
    cells: int = 5,
    min_cell_fraction: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
) -> CTResult:
    """C_T data-copying statistic (Meehan et al. 2020) of synthetic features."""
    train = _features(training, "training", cells)
    test = _features(held_out, "held-out", 2)
    fake = _features(synthetic, "synthetic", 2)
    if not train.shape[1] == test.shape[1] == fake.shape[1]:
        raise EvaluationError("training, held-out and synthetic features must have the same dimension")
    centroids, _ = kmeans2(train, cells, minit="++", seed=seed)
    cell_test, _ = vq(test, centroids)
    cell_fake, _ = vq(fake, centroids)
    d_test = nearest_neighbours(test, train, 1, device=device)[0][:, 0]
    d_fake = nearest_neighbours(fake, train, 1, device=device)[0][:, 0]
    z: dict[int, float] = {}
    weights: dict[int, float] = {}
    for c in range(cells):
        q, p = d_fake[cell_fake == c], d_test[cell_test == c]
        if q.size < max(1, min_cell_fraction * fake.shape[0]) or p.size == 0:
            continue
        m, n = q.size, p.size
        u = mannwhitneyu(q, p, alternative="less").statistic  # counts pairs where synthetic is farther
        z[c] = float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
        weights[c] = p.size / test.shape[0]
    if not z:
        raise EvaluationError(
            f"no k-means cell holds at least {min_cell_fraction:.0%} of the synthetic tiles and a held-out tile; "
            f"use more tiles or fewer cells (now {cells})"
        )
    total = sum(weights.values())
    ct = sum(weights[c] * z[c] for c in z) / total
    return CTResult(ct=float(ct), cell_z=z, cells_used=len(z), cells=cells)
