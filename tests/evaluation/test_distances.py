"""Known-answer tests of FID, KID, Inception Score and improved precision/recall."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.distances import (
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)


def test_frechet_distance_of_two_gaussians_equals_the_closed_form():
    """For commuting (diagonal) covariances FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_with_full_covariances_matches_rotated_closed_form():
    """Rotating both Gaussians by the same orthogonal matrix leaves the distance unchanged."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, (20000, 4))
    y = rng.normal(0.5, 2.0, (20000, 4))
    expected = 4 * 0.5**2 + 4 * (1 - 2) ** 2
    assert fid_from_features(x, y) == pytest.approx(expected, rel=0.05)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(3).normal(size=(300, 32))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    x, y, z = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), rng.normal(1.0, 1.0, (400, 16))
    same, _ = kernel_distance(x, y, subsets=20, subset_size=200)
    other, _ = kernel_distance(x, z, subsets=20, subset_size=200)
    assert abs(same) < 0.02 and other > 0.5
    assert kernel_distance(x, z, subsets=5, subset_size=100, seed=7) == kernel_distance(
        x, z, subsets=5, subset_size=100, seed=7
    )


def test_inception_score_bounds():
    """Confident, evenly spread predictions over C classes give IS = C; identical predictions give 1."""
    classes = 10
    confident = np.full((200, classes), -50.0)
    confident[np.arange(200), np.arange(200) % classes] = 50.0
    assert inception_score(confident, splits=2)[0] == pytest.approx(classes, rel=1e-6)
    same = np.tile(np.arange(classes, dtype=float), (200, 1))
    assert inception_score(same, splits=2)[0] == pytest.approx(1.0, abs=1e-9)


def test_precision_recall_against_itself_and_a_disjoint_cluster():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 100.0
    assert precision_recall(x, far) == (0.0, 0.0)


def test_precision_recall_of_a_subset_mode():
    """Synthetic tiles covering one of two real modes: high precision, about half the recall."""
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 20])
    fake = rng.normal(size=(300, 4))
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9 and 0.4 < recall < 0.6


def test_bad_features_are_refused():
    with pytest.raises(DiffInfiniteError, match="at least"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(DiffInfiniteError, match="NaN"):
        fid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))
