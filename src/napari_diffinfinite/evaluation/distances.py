"""Distances between sets of image features: FID, KID, Inception Score, improved precision/recall.

All functions take features already extracted (``(N, D)`` arrays, one row per image), so
the same maths serves Inception-v3 features, a pathology foundation model's, Patch-FID
crops, and the tests' small random networks.

Why the maths is here and not imported: the libraries that implement these metrics
(torch-fidelity, clean-fid, torchmetrics' image metrics) import torchvision when their
package is imported, and torchvision cannot be installed next to this project's torch;
prdc needs scikit-learn and holds N x N distance matrices. The definitions followed, each
checked by a known-answer test in ``tests/evaluation/test_distances.py``:

* **Fréchet distance** (Heusel et al. 2017, FID):
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of the feature means and covariances,
  with the matrix square root by ``scipy.linalg.sqrtm`` and pytorch-fid's small diagonal
  offset when the product is singular.
* **Kernel distance** (Bińkowski et al. 2018, KID): the unbiased MMD^2 with the kernel
  ``(x . y / D + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size`` features
  of each set (torch-fidelity's defaults: 100 subsets of 1000); mean and standard deviation.
* **Inception Score** (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` of softmax
  class probabilities, over ``splits`` (10) consecutive splits; mean and standard deviation.
* **Improved precision and recall** (Kynkäänniemi et al. 2019): each set's manifold is the
  union of balls around its features with radius the distance to the k-th nearest
  neighbour (k = 3) in the same set; precision = fraction of synthetic features inside the
  real manifold, recall = fraction of real features inside the synthetic manifold.

Distances are computed in float64 on the CPU (numpy) or in chunks on the GPU (torch) when
one is given, so memory stays O(N * chunk), not O(N^2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from ..errors import DiffInfiniteError

__all__ = [
    "EvaluationError",
    "FeatureStats",
    "feature_stats",
    "frechet_distance",
    "fid_from_features",
    "kernel_distance",
    "inception_score",
    "precision_recall",
    "kth_neighbour_radii",
    "nearest_neighbours",
]


class EvaluationError(DiffInfiniteError):
    """An evaluation cannot run: unusable inputs, too few tiles, missing weights or libraries."""


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set (what FID compares), and how many features made them."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def _features(x: np.ndarray | torch.Tensor, name: str, min_rows: int = 2) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise EvaluationError(f"{name} features must be an (N, D) array, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise EvaluationError(f"{name}: {x.shape[0]} features; at least {min_rows} are needed (sample more tiles)")
    if not np.isfinite(x).all():
        raise EvaluationError(f"{name} features contain NaN or infinity; the feature extractor is broken")
    return x.astype(np.float64, copy=False)


def feature_stats(features: np.ndarray | torch.Tensor) -> FeatureStats:
    """Mean and (unbiased) covariance of ``(N, D)`` features."""
    x = _features(features, "the")
    return FeatureStats(mu=x.mean(axis=0), sigma=np.atleast_2d(np.cov(x, rowvar=False)), count=x.shape[0])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise EvaluationError(
            f"cannot compare feature statistics of different sizes: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product (fewer tiles than dimensions) is handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)  # numerical noise can leave tiny imaginary parts
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
    return max(value, 0.0)


def fid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (FID when they are Inception pool features)."""
    a, b = feature_stats(real), feature_stats(fake)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def kernel_distance(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial-kernel MMD^2 over random subsets."""
    x, y = _features(real, "real"), _features(fake, "synthetic")
    if x.shape[1] != y.shape[1]:
        raise EvaluationError(f"real features have {x.shape[1]} dimensions, synthetic {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        k_aa = (a @ a.T / d + 1) ** 3
        k_bb = (b @ b.T / d + 1) ** 3
        k_ab = (a @ b.T / d + 1) ** 3
        values[i] = (
            (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
            + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
            - 2 * k_ab.mean()
        )
    return float(values.mean()), float(values.std())


def inception_score(logits: np.ndarray | torch.Tensor, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of class logits ``(N, classes)``."""
    z = _features(logits, "the logits", min_rows=splits)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def nearest_neighbours(
    query: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    k: int = 1,
    *,
    exclude_self: bool = False,
    device: str | torch.device = "cpu",
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices ``(N, k)`` of each query row's k nearest reference rows (Euclidean).

    ``exclude_self`` drops each row's match with itself (query and reference the same set).
    """
    q = torch.as_tensor(_features(query, "query", 1), device=device)
    r = torch.as_tensor(_features(reference, "reference", 1), device=device)
    kk = k + 1 if exclude_self else k
    if kk > r.shape[0]:
        raise EvaluationError(f"{k} nearest neighbours need more than {r.shape[0]} reference features")
    dists, idxs = [], []
    for start in range(0, q.shape[0], chunk):
        d = _pairwise(q[start : start + chunk], r)
        if exclude_self:
            rows = torch.arange(d.shape[0], device=d.device)
            d[rows, rows + start] = torch.inf
        values, index = torch.topk(d, min(kk, r.shape[0]), dim=1, largest=False)
        dists.append(values[:, :k].cpu())
        idxs.append(index[:, :k].cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy()


def kth_neighbour_radii(features: np.ndarray | torch.Tensor, k: int = 3, **kwargs) -> np.ndarray:
    """Distance of each feature to its k-th nearest other feature of the same set."""
    dists, _ = nearest_neighbours(features, features, k, exclude_self=True, **kwargs)
    return dists[:, k - 1]


def _inside(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> np.ndarray:
    """For each query row: is it within radius of at least one centre?"""
    out = []
    for start in range(0, query.shape[0], chunk):
        d = _pairwise(query[start : start + chunk], centres)
        out.append((d <= radii[None, :]).any(dim=1).cpu())
    return torch.cat(out).numpy()


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    k: int = 3,
    device: str | torch.device = "cpu",
    chunk: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    x = torch.as_tensor(_features(real, "real", k + 1), device=device)
    y = torch.as_tensor(_features(fake, "synthetic", k + 1), device=device)
    if x.shape[1] != y.shape[1]:
        raise EvaluationError(f"real features have {x.shape[1]} dimensions, synthetic {y.shape[1]}")
    r_real = torch.as_tensor(kth_neighbour_radii(x, k, device=device, chunk=chunk), device=device)
    r_fake = torch.as_tensor(kth_neighbour_radii(y, k, device=device, chunk=chunk), device=device)
    precision = _inside(y, x, r_real, chunk).mean()
    recall = _inside(x, y, r_fake, chunk).mean()
    return float(precision), float(recall)
