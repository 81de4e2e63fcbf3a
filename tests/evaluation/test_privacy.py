"""Authenticity and C_T data-copying tests on features with known copying."""

from __future__ import annotations

import numpy as np

from napari_diffinfinite.evaluation.privacy import authenticity, ct_score


def _sets(seed=0, n=400, d=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))


def test_authenticity_flags_exact_copies_of_training_tiles():
    train, _, fresh = _sets()
    synthetic = np.concatenate([fresh[:300], train[:100]])  # the last 100 are copies
    result = authenticity(train, synthetic)
    assert set(range(300, 400)) <= set(result.unauthentic.tolist())
    assert result.score <= 0.75
    np.testing.assert_array_equal(result.nearest_training[300:], np.arange(100))


def test_authenticity_of_fresh_samples_is_high():
    train, _, fresh = _sets(1)
    assert authenticity(train, fresh).score > 0.5


def test_ct_is_negative_for_copies_and_near_zero_for_fresh_samples():
    train, held_out, fresh = _sets(2)
    rng = np.random.default_rng(3)
    near_copies = train[rng.choice(len(train), 400)] + rng.normal(scale=0.05, size=(400, 8))
    copying = ct_score(train, held_out, near_copies, cells=3)
    honest = ct_score(train, held_out, fresh, cells=3)
    assert copying.ct < -5
    assert abs(honest.ct) < 3
    assert honest.cells_used == 3
