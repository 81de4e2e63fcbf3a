"""Region and whole-slide export: OME-Zarr, TIFF layouts, GeoJSON, failure modes, memory."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tracemalloc
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import zarr

from napari_diffinfinite.errors import ExportError
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide import export as export_module
from napari_diffinfinite.slide import export_tiff as export_tiff_module
from napari_diffinfinite.slide.atomic import atomic_path
from napari_diffinfinite.slide.export import (
    check_region,
    export_slide,
    labels_path,
    parse_region,
)
from napari_diffinfinite.slide.pyramid import downsample_image, downsample_labels
from napari_diffinfinite.slide.store import SlideStore

from .conftest import CLASS_COLORS, CLASS_NAMES, PIXEL_SIZE, make_store

REGION = (37, 101, 1111, 1003)  # x, y, w, h: not chunk-aligned, odd sizes, 3 levels


def crop(image: np.ndarray, region) -> np.ndarray:
    x, y, w, h = region
    return image[..., y : y + h, x : x + w]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- regions


def test_parse_and_check_region():
    assert parse_region("1, 2,30,40") == (1, 2, 30, 40)
    with pytest.raises(ExportError, match="x,y,w,h"):
        parse_region("1,2,3")
    assert check_region(None, (10, 20)) == (0, 0, 20, 10)
    with pytest.raises(ExportError, match="outside the slide"):
        check_region((15, 0, 10, 5), (10, 20))
    with pytest.raises(ExportError, match="outside the slide"):
        check_region((-1, 0, 5, 5), (10, 20))
    with pytest.raises(ExportError, match="empty"):
        check_region((0, 0, 0, 5), (10, 20))


def test_labels_path_names():
    assert labels_path("a/x.ome.tif").name == "x.labels.ome.tif"
    assert labels_path("x.tiff").name == "x.labels.tiff"
    assert labels_path("x.TIF").name == "x.labels.TIF"
    assert labels_path("x").name == "x.labels.tif"


# --------------------------------------------------------------------------- OME-Zarr


def test_ome_zarr_region_round_trip(slide_store, slide_image, slide_labels, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    events = []
    out = tmp_path / "region.zarr"
    result = export_slide(slide_store, out, "ome-zarr", REGION, progress=events.append)
    assert os.fspath(result) == os.fspath(out) and result.warnings == []
    assert events[-1].stage == "export" and events[-1].done == events[-1].total

    nodes = list(Reader(parse_url(str(out)))())
    image_node, label_node = nodes[0], [n for n in nodes if n.zarr.path.endswith("tissue")][0]
    source = crop(slide_image, REGION)
    source_labels = crop(slide_labels, REGION)
    assert len(image_node.data) == result.num_levels == 3
    for k, level in enumerate(image_node.data):
        np.testing.assert_array_equal(np.asarray(level), downsample_image(source, 2**k))
    for k, level in enumerate(label_node.data):
        np.testing.assert_array_equal(np.asarray(level), downsample_labels(source_labels, 2**k))

    attrs = json.loads((out / ".zattrs").read_text())
    multiscale = attrs["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert multiscale["axes"][1] == {"name": "y", "type": "space", "unit": "micrometer"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[1.0, PIXEL_SIZE * 2**k, PIXEL_SIZE * 2**k] for k in range(3)]
    assert [c["color"] for c in attrs["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]
    provenance = attrs["diffinfinite"]
    assert provenance["synthetic"] is True and provenance["seed"] == 0
    assert provenance["export"]["region"] == {"x": 37, "y": 101, "w": 1111, "h": 1003}
    label_attrs = json.loads((out / "labels" / "tissue" / ".zattrs").read_text())["image-label"]
    assert [p["class"] for p in label_attrs["properties"]] == CLASS_NAMES
    assert [c["rgba"][:3] for c in label_attrs["colors"]] == [list(c) for c in CLASS_COLORS]
    assert json.loads((out / ".zgroup").read_text())["zarr_format"] == 2


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_validates(slide_store, tmp_path, version):
    from ome_zarr_models import open_ome_zarr

    out = tmp_path / f"v{version}.zarr"
    export_slide(slide_store, out, "ome-zarr", (0, 0, 600, 700), ngff_version=version)
    model = open_ome_zarr(out)
    assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
    assert type(model).__name__ == "Image"
    reopened = SlideStore.open(out)  # our own reader, any NGFF version
    assert reopened.shape == (700, 600) and reopened.class_names == CLASS_NAMES
    assert reopened.pixel_size_um == PIXEL_SIZE


def test_ome_zarr_models_cli_validates(slide_store, tmp_path):
    cli = shutil.which("ome-zarr-models")
    if cli is None:
        pytest.skip("ome-zarr-models CLI not installed")
    out = tmp_path / "cli.zarr"
    export_slide(slide_store, out, "ome-zarr", (100, 100, 300, 300))
    done = subprocess.run([cli, "validate", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_whole_slide_export_equals_store_levels(slide_store, tmp_path):
    out = tmp_path / "whole.zarr"
    result = export_slide(slide_store.path, out, "ome-zarr")
    exported = SlideStore.open(out)
    assert result.region == (0, 0, 1700, 1300) and exported.num_levels == slide_store.num_levels
    for k in range(slide_store.num_levels):
        np.testing.assert_array_equal(exported.image_level(k)[...], slide_store.image_level(k)[...])
        np.testing.assert_array_equal(exported.label_level(k)[...], slide_store.label_level(k)[...])


# --------------------------------------------------------------------------- TIFF


def test_ome_tiff_region(slide_store, slide_image, slide_labels, tmp_path):
    out = tmp_path / "region.ome.tif"
    result = export_slide(slide_store, out, "ome-tiff", REGION, compression="zlib")
    assert result.files == [out, tmp_path / "region.labels.ome.tif"]
    assert leftovers(tmp_path) == ["region.labels.ome.tif", "region.ome.tif"]
    source = crop(slide_image, REGION)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.pages) == 1  # levels are SubIFDs, not pages
        assert len(tif.pages[0].subifds) == 2
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [(1003, 1111, 3), (502, 556, 3), (251, 278, 3)]
        for k, level in enumerate(series.levels):
            np.testing.assert_array_equal(level.asarray(), np.moveaxis(downsample_image(source, 2**k), 0, -1))
        assert tif.pages[0].tilewidth == 512 and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        root = ET.fromstring(tif.ome_metadata)
    ns = {"ome": root.tag.split("}")[0].strip("{")}
    pixels = root.find("ome:Image/ome:Pixels", ns)
    assert float(pixels.get("PhysicalSizeX")) == PIXEL_SIZE and pixels.get("PhysicalSizeXUnit") == "µm"
    assert "Synthetic" in root.find("ome:Image/ome:Description", ns).text
    values = {m.get("K"): m.text for m in root.iter(f"{{{ns['ome']}}}M")}
    assert values["synthetic"] == "true"
    with tifffile.TiffFile(result.files[1]) as tif:
        levels = tif.series[0].levels
        np.testing.assert_array_equal(levels[0].asarray(), crop(slide_labels, REGION))
        np.testing.assert_array_equal(levels[1].asarray(), downsample_labels(crop(slide_labels, REGION), 2))


def test_ome_tiff_jpeg_is_close(slide_store, slide_image, tmp_path):
    out = tmp_path / "whole.ome.tif"
    export_slide(slide_store, out, "ome-tiff", quality=90)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        levels = tif.series[0].levels
        assert len(levels) == slide_store.num_levels
        diff = np.abs(levels[0].asarray().astype(int) - np.moveaxis(slide_image, 0, -1))
    assert diff.mean() < 3.0


def test_openslide_tiff_opens_with_all_levels(slide_store, slide_image, slide_labels, tmp_path):
    openslide = pytest.importorskip("openslide")
    out = tmp_path / "region.tif"
    result = export_slide(slide_store, out, "tiff", REGION, compression="zlib")
    source = crop(slide_image, REGION)
    slide = openslide.OpenSlide(str(out))
    try:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1111, 1003), (556, 502), (278, 251))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(PIXEL_SIZE)
        got = np.asarray(slide.read_region((200, 300), 0, (400, 350)))[..., :3]
        np.testing.assert_array_equal(got, np.moveaxis(source[:, 300:650, 200:600], 0, -1))
        level1 = np.moveaxis(downsample_image(source, 2), 0, -1)
        got = np.asarray(slide.read_region((0, 0), 1, (556, 502)))[..., :3]
        np.testing.assert_array_equal(got, level1)
    finally:
        slide.close()
    labels = openslide.OpenSlide(str(result.files[1]))
    try:
        assert labels.level_count == 3
        grey = np.asarray(labels.read_region((0, 0), 0, (1111, 1003)))[..., 0]
        np.testing.assert_array_equal(grey, crop(slide_labels, REGION))
    finally:
        labels.close()


def test_whole_slide_openslide_tiff(slide_store, tmp_path):
    openslide = pytest.importorskip("openslide")
    out = tmp_path / "whole.tif"
    export_slide(slide_store, out, "tiff")
    with openslide.OpenSlide(str(out)) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1700, 1300), (850, 650), (425, 325))


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_region_export_imports_back(slide_store, slide_labels, tmp_path):
    from napari_diffinfinite.slide.geojson import geojson_to_labels

    out = tmp_path / "labels.geojson"
    result = export_slide(slide_store, out, "geojson", REGION)
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    assert collection["diffinfinite"]["synthetic"] is True
    names = {f["properties"]["classification"]["name"] for f in collection["features"]}
    present = np.unique(crop(slide_labels, REGION))
    assert names == {CLASS_NAMES[v] for v in present if v} == {"tumour", "stroma"}
    x, y, w, h = result.region
    imported = geojson_to_labels(out, class_names=CLASS_NAMES, slide_shape=(h, w), downsample=1)
    np.testing.assert_array_equal(imported.canvas, crop(slide_labels, REGION))


def test_geojson_of_a_region_too_large_even_at_the_coarsest_level_is_refused(slide_store, tmp_path):
    """A store without a pyramid (one 60000 x 60000 px level) made GeoJSON export read the whole
    level (26.8 GiB); the limit that picks the level now also refuses what no level fits."""
    from napari_diffinfinite.slide.geojson import export_geojson

    with pytest.raises(ExportError, match="even at the coarsest"):
        export_geojson(slide_store, tmp_path / "o.geojson", max_pixels=64)
    assert leftovers(tmp_path) == []


def test_geojson_export_of_coarse_level_is_close(slide_store, slide_labels, tmp_path):
    from napari_diffinfinite.slide.geojson import geojson_to_labels

    out = tmp_path / "coarse.geojson"
    export_module.export_geojson(slide_store, out, max_pixels=500 * 500)  # traced on level 2
    imported = geojson_to_labels(out, class_names=CLASS_NAMES, slide_shape=(1300, 1700), downsample=1)
    assert (imported.canvas != slide_labels).mean() < 0.02


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("fmt", ["ome-zarr", "ome-tiff", "tiff", "geojson"])
def test_bad_regions_leave_nothing(slide_store, tmp_path, fmt):
    for region in [(1600, 0, 200, 100), (0, 0, 0, 10), (-5, 0, 10, 10)]:
        with pytest.raises(ExportError):
            export_slide(slide_store, tmp_path / "out", fmt, region)
    assert leftovers(tmp_path) == []


def test_bad_targets_and_sources(slide_store, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ExportError, match="does not exist"):
        export_slide(slide_store, tmp_path / "a-file" / "out.zarr", "ome-zarr")
    with pytest.raises(ExportError, match="does not exist"):
        export_slide(slide_store, tmp_path / "missing" / "out.zarr", "ome-zarr")
    with pytest.raises(ExportError, match="already exists"):
        export_slide(slide_store, tmp_path / "a-file", "geojson")
    (tmp_path / "not-a-slide").mkdir()
    (tmp_path / "not-a-slide" / "notes.txt").write_text("hello")
    with pytest.raises(ExportError, match="not a slide store"):
        export_slide(tmp_path / "not-a-slide", tmp_path / "o.zarr", "ome-zarr")
    with pytest.raises(ExportError, match="unknown export format"):
        export_slide(slide_store, tmp_path / "o.png", "png")
    with pytest.raises(ExportError, match="compression"):
        export_slide(slide_store, tmp_path / "o.tif", "tiff", compression="lzw")
    with pytest.raises(ExportError, match="NGFF"):
        export_slide(slide_store, tmp_path / "o.zarr", "ome-zarr", ngff_version="0.3")
    assert leftovers(tmp_path) == ["a-file", "not-a-slide"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(slide_store, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export_slide(slide_store, locked / "o.zarr", "ome-zarr")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("fmt, region", [("ome-zarr", REGION), ("tiff", REGION), ("ome-tiff", None), ("geojson", None)])
def test_cancel_leaves_nothing(slide_store, tmp_path, fmt, region):
    token = CancelToken()

    def progress(event):
        if event.done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        export_slide(slide_store, tmp_path / "out", fmt, region, progress=progress, cancel=token)
    assert leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing(slide_store, tmp_path, monkeypatch):
    def broken(path, levels, **kwargs):
        path.write_bytes(b"half a tiff")
        raise OSError("disk full")

    monkeypatch.setattr(export_tiff_module, "write_tiff_pyramid", broken)
    with pytest.raises(OSError, match="disk full"):
        export_slide(slide_store, tmp_path / "o.tif", "tiff", REGION)
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_an_existing_export(slide_store, tmp_path):
    out = tmp_path / "o.zarr"
    export_slide(slide_store, out, "ome-zarr", (0, 0, 100, 100))
    result = export_slide(slide_store, out, "ome-zarr", (0, 0, 64, 32), overwrite=True)
    assert SlideStore.open(result.path).shape == (32, 64)
    assert leftovers(tmp_path) == ["o.zarr"]


@pytest.mark.parametrize("user_file", ["labels/mine.txt", "0/extra/f", "7/thesis.tex"])
def test_overwrite_refuses_an_export_holding_a_user_file_inside(slide_store, tmp_path, user_file):
    out = tmp_path / "o.zarr"
    export_slide(slide_store, out, "ome-zarr", (0, 0, 100, 100))
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_text("mine")
    with pytest.raises(ExportError, match="did not write"):
        export_slide(slide_store, out, "ome-zarr", (0, 0, 64, 32), overwrite=True)
    assert (out / user_file).read_text() == "mine"


def test_atomic_path_removes_temporary_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.zarr", directory=True) as tmp:
            (tmp / "chunk").write_text("data")
            assert tmp.name.startswith(".x.zarr.tmp-")
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_foreign_ome_zarr_without_labels(tmp_path, slide_image):
    """An RGB OME-Zarr written by ome-zarr-py (its own level sizes, no labels) exports too."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    image = slide_image[:, :700, :900]
    root = zarr.open_group(tmp_path / "foreign.zarr", mode="w", zarr_format=2)
    write_image(image, root, axes="cyx", fmt=FormatV04(), scale_factors=(2, 4, 8))
    result = export_slide(tmp_path / "foreign.zarr", tmp_path / "f.ome.tif", "ome-tiff", compression="zlib")
    assert result.files == [tmp_path / "f.ome.tif"]
    assert any("no 'tissue' label image" in w for w in result.warnings)
    with tifffile.TiffFile(result.path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(700, 900, 3), (350, 450, 3)]
        np.testing.assert_array_equal(levels[1].asarray(), np.moveaxis(downsample_image(image, 2), 0, -1))


def test_partial_slide_exports_with_a_warning(tmp_path):
    store = make_store(tmp_path / "partial.zarr", (600, 700), complete=False)
    result = export_slide(store, tmp_path / "p.zarr", "ome-zarr")
    assert any("partial slide" in w for w in result.warnings)


# --------------------------------------------------------------------------- CLI


def _cli(argv):
    from napari_diffinfinite.commands import export as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return command.run(parser.parse_args(["export", *argv]))


def test_cli_exports_a_region(slide_store, tmp_path, capsys):
    out = tmp_path / "r.ome.tif"
    code = _cli([str(slide_store.path), str(out), "--region", "10,20,300,200", "-q", "--compression", "zlib"])
    assert code == 0
    assert "r.labels.ome.tif" in capsys.readouterr().out
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].shape == (200, 300, 3)


def test_cli_rejects_bad_region_and_unknown_suffix(slide_store, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli([str(slide_store.path), str(tmp_path / "r.zarr"), "--region", "1,2"])
    with pytest.raises(ExportError, match="cannot tell the format"):
        _cli([str(slide_store.path), str(tmp_path / "r.png"), "-q"])
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- memory


def test_peak_memory_does_not_grow_with_the_slide(tmp_path):
    """Export a 192 MB (raw RGB) region with well under that much Python/numpy memory."""
    import ome_zarr.writer  # noqa: F401 - imported before measuring: modules are not the export

    side = 8192
    store = SlideStore.create(
        tmp_path / "big.zarr", (side, side), class_names=CLASS_NAMES, class_colors=CLASS_COLORS,
        provenance={},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for y0, x0 in [(0, 0), (4096, 4096), (7680, 7680)]:
        store.write_tile(y0, x0, rng.integers(0, 256, (3, 512, 512), dtype=np.uint8))
    region = (1, 1, side - 1, side - 1)  # unaligned: every output chunk reads four
    raw = 3 * (side - 1) ** 2
    tracemalloc.start()
    try:
        export_slide(store, tmp_path / "big-region.zarr", "ome-zarr", region)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < raw / 3, f"peak {peak / 2**20:.0f} MiB for a {raw / 2**20:.0f} MiB region"
    exported = SlideStore.open(tmp_path / "big-region.zarr")
    np.testing.assert_array_equal(
        exported.image_level(0)[:, 4095:4607, 4095:4607], store.image_level(0)[:, 4096:4608, 4096:4608]
    )


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_region_carries_its_place_on_the_slide(slide_store, tmp_path, version):
    """Every level (image and labels) has a translation to the region's corner, in micrometres."""
    from ome_zarr_models import open_ome_zarr

    from napari_diffinfinite.slide.ngff import ngff_attrs
    from napari_diffinfinite.widgets._geometry import ngff_translation

    out = tmp_path / "r.zarr"
    export_slide(slide_store, out, "ome-zarr", (37, 101, 600, 700), ngff_version=version)
    open_ome_zarr(out)  # still valid NGFF
    root = zarr.open_group(str(out), mode="r")
    for group in (root, root["labels"]["tissue"]):
        for dataset in ngff_attrs(dict(group.attrs))["multiscales"][0]["datasets"]:
            kinds = [t["type"] for t in dataset["coordinateTransformations"]]
            assert kinds == ["scale", "translation"]
            assert dataset["coordinateTransformations"][1]["translation"][-2:] == pytest.approx(
                [101 * PIXEL_SIZE, 37 * PIXEL_SIZE]
            )
    assert ngff_translation(ngff_attrs(dict(root.attrs))) == pytest.approx((101 * PIXEL_SIZE, 37 * PIXEL_SIZE))
    whole = tmp_path / "w.zarr"
    export_slide(slide_store, whole, "ome-zarr", None, ngff_version=version)
    datasets = ngff_attrs(dict(zarr.open_group(str(whole), mode="r").attrs))["multiscales"][0]["datasets"]
    assert all(len(d["coordinateTransformations"]) == 1 for d in datasets)  # the whole slide sits at 0, 0
