"""The slide-store reader without Qt: detection, lazy RGB view, layer data, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffinfinite._reader import (
    is_slide_store,
    napari_get_reader,
    napari_get_wsi_reader,
    read_slide_store,
)
from napari_diffinfinite.slide.masks import CanvasMask
from napari_diffinfinite.slide.store import SlideStore
from napari_diffinfinite.widgets._layers import ChannelLastArray, label_colormap, slide_layer_data

NAMES = ["unknown", "tumour", "stroma"]
COLORS = [(0, 0, 0), (230, 25, 75), (60, 180, 75)]


def _tile(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    return np.stack([yy % 256, xx % 256, (yy + xx) % 256]).astype(np.uint8)


@pytest.fixture
def store_path(tmp_path):
    """A complete 1200 x 1000 px store (3 levels) with a gradient image and two classes."""
    path = tmp_path / "slide.zarr"
    store = SlideStore.create(
        path, (1200, 1000), class_names=NAMES, class_colors=COLORS,
        provenance={"seed": 7, "steps": 2}, pixel_size_um=0.5,
    )  # fmt: skip
    for y0 in range(0, 1200, 512):
        for x0 in range(0, 1000, 512):
            h, w = min(512, 1200 - y0), min(512, 1000 - x0)
            store.write_tile(y0, x0, _tile(y0, x0, h, w))
    canvas = np.ones((12, 10), np.uint8)
    canvas[:, 5:] = 2
    store.write_labels(CanvasMask(canvas, (1200, 1000)))
    store.mark_complete()
    return path


def test_detects_only_slide_stores(store_path, tmp_path):
    assert is_slide_store(store_path)
    assert napari_get_reader(str(store_path)) is read_slide_store
    assert napari_get_reader([str(store_path)]) is read_slide_store
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    assert napari_get_reader(str(plain)) is None
    (tmp_path / "x.png").write_bytes(b"not an image")
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    assert napari_get_reader([str(store_path), str(store_path)]) is None
    # an OME-Zarr with other axes (e.g. a label-only image) is not a slide
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / ".zattrs").write_text(json.dumps({"multiscales": [{"axes": ["y", "x"], "datasets": []}]}))
    assert not is_slide_store(other)


def test_wsi_reader_declines_non_slides(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"nope")
    assert napari_get_wsi_reader(str(tmp_path / "a.svs")) is None
    assert napari_get_wsi_reader(str(tmp_path)) is None


def test_channel_last_view_matches_transpose():
    data = np.arange(3 * 7 * 5, dtype=np.uint8).reshape(3, 7, 5)
    view = ChannelLastArray(data)
    full = np.moveaxis(data, 0, -1)
    assert view.shape == (7, 5, 3) and view.ndim == 3 and view.dtype == np.uint8
    assert view.size == full.size and len(view) == 7
    np.testing.assert_array_equal(np.asarray(view), full)
    for key in [
        (slice(1, 4), slice(0, 5, 2)),
        (slice(None), slice(2, 3), 1),
        (2,),
        2,
        (Ellipsis, 0),
        (slice(1, 6, 2), Ellipsis),
        (3, 4),
        (3, 4, 2),
        (np.int64(3), slice(None)),
        ([0, 2], slice(1, 3)),
    ]:
        np.testing.assert_array_equal(view[key], full[key], err_msg=repr(key))


def test_layer_data_of_a_store(store_path):
    pytest.importorskip("napari")  # the layer data hold napari colormaps
    layers = read_slide_store(str(store_path))
    (image, image_meta, image_kind), (labels, label_meta, label_kind) = layers
    assert (image_kind, label_kind) == ("image", "labels")
    store = SlideStore.open(store_path)
    assert [lvl.shape for lvl in image] == [(h, w, 3) for h, w in store.level_shapes]
    assert image_meta["rgb"] and image_meta["multiscale"]
    assert image_meta["metadata"]["provenance"]["seed"] == 7
    assert image_meta["metadata"]["provenance"]["synthetic"] is True
    assert image_meta["metadata"]["store_path"] == str(store_path)
    np.testing.assert_array_equal(image[0][100:140, 600:700], _tile(100, 600, 40, 100).transpose(1, 2, 0))
    np.testing.assert_array_equal(image[1][:], np.moveaxis(store.image_level(1)[:], 0, -1))
    assert [lvl.shape for lvl in labels] == store.level_shapes
    assert int(labels[0][0, 0]) == 1 and int(labels[0][0, 999]) == 2
    assert label_meta["features"]["class"] == NAMES
    cmap = label_meta["colormap"]
    np.testing.assert_allclose(cmap.color_dict[1][:3], np.array(COLORS[1]) / 255, atol=1e-6)
    assert cmap.color_dict[0][3] == 0  # unknown is transparent
    # placed in micrometres (the store's 0.5 µm pixels), at the origin
    for meta in (image_meta, label_meta):
        assert meta["scale"] == (0.5, 0.5) and meta["translate"] == (0.0, 0.0)
        assert meta["units"] == ("um", "um")


def test_real_slide_is_placed_in_micrometres(store_path, tmp_path):
    """A real slide opens at its own pixel size in µm, so it overlays synthetic ones at true size."""
    pytest.importorskip("openslide")
    from napari_diffinfinite.slide.export import export_slide

    export_slide(store_path, tmp_path / "real.tif", "tiff")  # a tiled TIFF OpenSlide reads, 0.5 µm/px
    reader = napari_get_wsi_reader(str(tmp_path / "real.tif"))
    assert reader is not None
    ((levels, meta, kind),) = reader(str(tmp_path / "real.tif"))
    assert kind == "image" and meta["multiscale"]
    np.testing.assert_allclose(meta["scale"], (0.5, 0.5))
    assert meta["metadata"]["synthetic"] is False


def test_view_sees_tiles_written_after_opening(tmp_path):
    pytest.importorskip("napari")  # the layer data hold napari colormaps
    """The lazy view re-reads the store: tiles written later show up (no stale cache)."""
    path = tmp_path / "live.zarr"
    writer = SlideStore.create(path, (1024, 1024), class_names=NAMES, class_colors=COLORS, provenance={})
    (image, _, _), *_ = slide_layer_data(SlideStore.open(path))
    assert int(np.asarray(image[0][600:700, 600:700]).max()) == 0
    writer.write_tile(512, 512, np.full((3, 512, 512), 200, np.uint8))
    assert int(np.asarray(image[0][600:700, 600:700]).min()) == 200
    assert int(np.asarray(image[1][300:350, 300:350]).min()) == 200


def test_label_colormap_accepts_both_colour_ranges():
    pytest.importorskip("napari")  # the layer data hold napari colormaps
    cmap = label_colormap([(0, 0, 0), (255, 0, 0), (0.0, 0.5, 1.0)])
    np.testing.assert_allclose(cmap.color_dict[1], (1, 0, 0, 1))
    np.testing.assert_allclose(cmap.color_dict[2], (0, 0.5, 1, 1))


def test_reading_a_slide_store_does_not_import_torch(store_path):
    """The reader runs on napari's GUI thread: importing torch there froze the window for 4 s
    on the first slide of a session (the reader reached torch through the engine package)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_diffinfinite._reader import napari_get_reader\n"
        f"layers = napari_get_reader({str(store_path)!r})({str(store_path)!r})\n"
        "assert layers, 'no layers'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_damaged_chunk_reads_as_zeros_with_one_warning(store_path, monkeypatch):
    """A chunk file overwritten with garbage used to raise the codec's error inside napari's
    slicing (a layer drawn but missing from the layer list); now it reads as zeros, the rest
    of the slide as written, and one warning names the store and the count."""
    pytest.importorskip("napari")
    from napari_diffinfinite.widgets import _layers

    warnings: list[str] = []
    monkeypatch.setattr(_layers, "_show_warning", warnings.append, raising=False)
    store = SlideStore.open(store_path)
    chunk = store_path / "0" / "0" / "0" / "1"  # level 0, all channels, chunk row 0, column 1
    assert chunk.is_file(), sorted(p.relative_to(store_path) for p in (store_path / "0").rglob("*"))[:8]
    chunk.write_bytes(b"garbage" * 10)
    label_chunk = next(
        p for p in sorted((store_path / "labels").rglob("*")) if p.is_file() and not p.name.startswith(".")
    )
    label_chunk.write_bytes(b"garbage" * 10)
    (image, _meta, _kind), (labels, _lmeta, _lkind) = read_slide_store(str(store_path))
    region = image[0][100:140, 480:700]  # spans chunk columns 0 (intact) and 1 (damaged)
    np.testing.assert_array_equal(region[:, :32], _tile(100, 480, 40, 32).transpose(1, 2, 0))
    assert not region[:, 32:].any()
    np.testing.assert_array_equal(image[0][0:8, 0:300:7], _tile(0, 0, 8, 300).transpose(1, 2, 0)[:, ::7])
    assert image[0][5, 600, 1] == 0 and image[0][5, 100, 1] == _tile(5, 100, 1, 1)[1, 0, 0]
    image[0][0:600, 500:1000]  # read again: still one warning for this level
    assert len(warnings) == 1 and str(store_path) in warnings[0] and "1 chunk cannot" in warnings[0], warnings
    np.asarray(labels[0])  # the damaged labels chunk reads as "unknown"
    assert len(warnings) == 2 and "labels" in warnings[1]
    assert store.level_shapes[0] == image[0].shape[:2]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    ("channels", "dtype", "claimed"), [(3, "u1", True), (2, "f4", False), (3, "u2", False), (4, "u1", False)]
)
def test_claims_other_tools_images_only_when_8_bit_rgb(tmp_path, zarr_format, channels, dtype, claimed):
    """A two-channel or 16-bit (c, y, x) OME-Zarr was claimed and then refused ("not an RGB
    slide") or shown saturated (contrast 0-255); such images are left to other readers."""
    import zarr

    path = tmp_path / "other.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("0", shape=(channels, 64, 64), dtype=dtype, chunks=(1, 32, 32))[:] = 1
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    multiscales = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1, 0.5, 0.5]}]}]}]  # fmt: skip
    group.attrs["multiscales"] = multiscales
    assert is_slide_store(path) is claimed
    assert (napari_get_reader(str(path)) is read_slide_store) is claimed


@pytest.mark.parametrize("text", ["[1, 2]", "[" * 100_000 + "]" * 100_000, '{"attributes": 3}', "{nope"])
def test_hostile_zarr_metadata_is_declined_not_raised(tmp_path, text):
    """napari asks every dropped folder; a zarr.json holding a list raised AttributeError, one
    nested 10^5 deep RecursionError."""
    folder = tmp_path / "x.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text(text)
    assert napari_get_reader(str(folder)) is None
