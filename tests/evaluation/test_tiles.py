"""Reproducible tile sampling (slides, stores, folders; glass skipped) and matched Patch-FID crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.patches import crop_specs, matched_crops
from napari_diffinfinite.evaluation.tiles import ResampledSlideSource, match_pixel_size, open_source, sample_tiles
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


def _store_at(path, pixel_size_um, shape=(256, 320)):
    from napari_diffinfinite.slide.store import SlideStore

    store = SlideStore.create(
        path, shape, class_names=["unknown", "tissue"], class_colors=[(0, 0, 0), (200, 100, 150)],
        pixel_size_um=pixel_size_um, provenance={"seed": 0},
    )  # fmt: skip
    rng = np.random.default_rng(1)
    store.write_tile(0, 0, rng.integers(0, 256, (3, *shape), dtype=np.uint8))
    store.mark_complete()
    return path


def test_a_resampled_slide_is_the_block_mean_of_the_slide(tmp_path):
    source = open_source(_store_at(tmp_path / "fine.zarr", 0.5))
    coarse = ResampledSlideSource(source, 2.0)
    assert coarse.level_shapes[0] == (128, 160) and coarse.pixel_size_um == 1.0
    full = source.read(0, 0, 256, 0, 320).astype(float)
    block_mean = full.reshape(128, 2, 160, 2, 3).mean(axis=(1, 3))
    got = coarse.read(0, 10, 74, 20, 100)
    assert got.shape == (64, 80, 3)
    assert np.abs(got - block_mean[10:74, 20:100]).max() <= 1  # PIL's fixed-point box filter, rounded to uint8


def test_slides_are_matched_to_one_pixel_size(tmp_path):
    fine = open_source(_store_at(tmp_path / "fine.zarr", 0.5))
    same = open_source(_store_at(tmp_path / "same.zarr", 1.02))  # within 5 %: kept as it is
    unknown = open_source(_store_at(tmp_path / "unknown.zarr", None))
    matched, notes = match_pixel_size([fine, same, unknown], 1.0)
    assert isinstance(matched[0], ResampledSlideSource) and matched[0].factor == 2.0
    assert matched[1] is same and matched[2] is unknown
    assert len(notes) == 1 and "unknown pixel size" in notes[0] and "unknown.zarr" in notes[0]
    with pytest.raises(DiffInfiniteError, match="coarser than the 0.25 um/px.*--pixel-size 0.5"):
        match_pixel_size([fine], 0.25)
    tiles = sample_tiles(matched[:1], 4, size=64, include_glass=True)
    assert all(t.shape == (64, 64, 3) for t in tiles)  # tiles of 64 px at 1 um/px: 128 px of the slide each


def test_a_decompression_bomb_in_a_tile_folder_is_one_message(tmp_path):
    """A 100 byte PNG claiming 100000 x 100000 px raised PIL's DecompressionBombError as an
    internal error."""
    import struct
    import zlib

    from napari_diffinfinite.evaluation.distances import EvaluationError
    from napari_diffinfinite.evaluation.tiles import sample_tiles

    folder = tmp_path / "tiles"
    folder.mkdir()
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    png += struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))  # no pixels at all
    (folder / "bomb.png").write_bytes(png)
    with pytest.raises(EvaluationError, match="bomb.png claims"):
        sample_tiles([folder], 1, size=64)
