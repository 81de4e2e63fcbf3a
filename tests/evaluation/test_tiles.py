"""Reproducible tile sampling (slides, stores, folders; glass skipped) and matched Patch-FID crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.patches import crop_specs, matched_crops
from napari_diffinfinite.evaluation.tiles import open_source, sample_tiles
from tests.slide.conftest import make_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "s.zarr"
    make_store(path, shape=(700, 900))
    return path


def test_same_seed_same_tiles_other_seed_other_tiles(cmu_svs):
    a = sample_tiles([cmu_svs], 10, size=128, seed=4)
    b = sample_tiles([cmu_svs], 10, size=128, seed=4)
    c = sample_tiles([cmu_svs], 10, size=128, seed=5)
    assert a.refs == b.refs and a.refs != c.refs
    assert len({(r.y, r.x) for r in a.refs}) == 10  # no tile twice
    assert all(r.y % 128 == 0 and r.x % 128 == 0 for r in a.refs)  # the non-overlapping grid
    for sample in (a, b, c):
        sample.close()


def test_glass_is_skipped_unless_asked(cmu_svs):
    tissue = sample_tiles([cmu_svs], 400, size=128, seed=0)
    everything = sample_tiles([cmu_svs], 400, size=128, seed=0, include_glass=True)
    try:
        assert len(tissue) < len(everything) == (2967 // 128) * (2220 // 128)
        bright = [np.mean(t) for t in tissue]
        assert np.median(bright) < 215  # glass is about 240
        assert "tissue tiles available" in tissue.notes[0]
    finally:
        tissue.close()
        everything.close()


def test_mixed_sources_share_the_tiles(cmu_svs, store_path, tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((80, 100, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    sample = sample_tiles([cmu_svs, store_path, folder], 7, size=64, seed=1, include_glass=True)
    try:
        assert [r.source for r in sample.refs].count(0) == 3 and [r.source for r in sample.refs].count(2) == 2
        tiles = list(sample)
        assert all(t.shape == (64, 64, 3) and t.dtype == np.uint8 for t in tiles)
        assert {s["kind"] for s in sample.describe()["sources"]} == {"slide", "store", "folder"}
    finally:
        sample.close()
    with pytest.raises(DiffInfiniteError, match="smaller than the tile size"):
        sample_tiles([folder], 1, size=128)
    with pytest.raises(DiffInfiniteError, match="does not exist"):
        sample_tiles([tmp_path / "nope"], 1)


def test_patch_crops_are_matched_and_multiscale(store_path):
    specs = crop_specs(30, 64, max_scale=8, seed=2)
    assert specs == crop_specs(30, 64, max_scale=8, seed=2)
    sides = [s.side for s in specs]
    assert min(sides) >= 64 and max(sides) <= 512 and max(sides) > 3 * min(sides)
    source = open_source(store_path)
    crops = list(matched_crops([source], specs, 64))
    assert all(c.shape == (64, 64, 3) for c in crops)
    big = next(s for s in specs if s.side > 256)
    full = source.read(0, 0, 700, 0, 900)
    y0, x0 = int(big.fy * (700 - big.side)), int(big.fx * (900 - big.side))
    expected = np.asarray(
        Image.fromarray(full[y0 : y0 + big.side, x0 : x0 + big.side]).resize((64, 64), Image.Resampling.BOX)
    )
    got = crops[specs.index(big)]
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 6  # read from a coarser level, same picture
