"""The tiled pyramid TIFF writer on plain arrays: layouts, tiles, metadata, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_diffinfinite.errors import ExportError
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide.export_tiff import write_tiff_pyramid
from napari_diffinfinite.slide.pyramid import downsample_image, downsample_labels, level_shapes, tile_count

from .conftest import structured_rgb

SHAPE = (700, 1100)


@pytest.fixture(scope="module")
def pyramid():
    image = structured_rgb(SHAPE, seed=3)
    return [downsample_image(image, 2**k) for k in range(len(level_shapes(SHAPE)))]


@pytest.mark.parametrize("layout", ["ome", "openslide"])
def test_lossless_levels_read_back(tmp_path, pyramid, layout):
    path = tmp_path / "p.tif"
    ticks = []
    write_tiff_pyramid(
        path, pyramid, layout=layout, compression="zlib", pixel_size_um=0.25,
        on_tile=lambda: ticks.append(1),
    )  # fmt: skip
    assert len(ticks) == tile_count([p.shape[1:] for p in pyramid]) == 6 + 2 + 1
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.is_ome == (layout == "ome")
        assert len(tif.pages) == (1 if layout == "ome" else len(pyramid))
        levels = tif.series[0].levels
        assert len(levels) == len(pyramid)
        for level, expected in zip(levels, pyramid):
            np.testing.assert_array_equal(level.asarray(), np.moveaxis(expected, 0, -1))
        page = tif.pages[0]
        assert (page.tilelength, page.tilewidth) == (512, 512)
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.25)
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER


def test_reduced_levels_are_marked(tmp_path, pyramid):
    path = tmp_path / "p.tif"
    write_tiff_pyramid(path, pyramid, layout="openslide", compression="none")
    with tifffile.TiffFile(path) as tif:
        assert [int(p.subfiletype) for p in tif.pages] == [0, 1, 1]


def test_labels_are_single_channel(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, SHAPE, dtype=np.uint8)
    levels = [downsample_labels(labels, 2**k) for k in range(2)]
    path = tmp_path / "labels.ome.tif"
    write_tiff_pyramid(path, levels, layout="ome", compression="zlib", annotations={"classes": {"1": "a"}})
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), levels[1])
    with pytest.raises(ExportError, match="lossless"):
        write_tiff_pyramid(tmp_path / "x.tif", levels, compression="jpeg")


def test_jpeg_quality_trades_size_for_error(tmp_path, pyramid):
    sizes, errors = {}, {}
    for quality in (50, 95):
        path = tmp_path / f"q{quality}.tif"
        write_tiff_pyramid(path, pyramid[:1], layout="openslide", compression="jpeg", quality=quality)
        sizes[quality] = path.stat().st_size
        errors[quality] = np.abs(tifffile.imread(path).astype(int) - np.moveaxis(pyramid[0], 0, -1)).mean()
    assert sizes[50] < sizes[95] and errors[95] < errors[50] < 6


def test_rejects_bad_options(tmp_path, pyramid):
    with pytest.raises(ExportError, match="layout"):
        write_tiff_pyramid(tmp_path / "x.tif", pyramid, layout="svs")
    with pytest.raises(ExportError, match="compression"):
        write_tiff_pyramid(tmp_path / "x.tif", pyramid, compression="webp")
    with pytest.raises(ExportError, match="quality"):
        write_tiff_pyramid(tmp_path / "x.tif", pyramid, quality=0)
    with pytest.raises(ExportError, match="no pyramid levels"):
        write_tiff_pyramid(tmp_path / "x.tif", [])


def test_cancel_stops_between_tiles(tmp_path, pyramid):
    token = CancelToken()
    ticks = []

    def tick():
        ticks.append(1)
        if len(ticks) == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        write_tiff_pyramid(tmp_path / "x.tif", pyramid, on_tile=tick, cancel=token)
    assert len(ticks) == 3
