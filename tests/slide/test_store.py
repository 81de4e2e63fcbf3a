"""The OME-Zarr slide store: layout, pyramid exactness, metadata, interoperability, resume state."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr

from napari_diffinfinite import __version__
from napari_diffinfinite.errors import StoreError
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide.masks import CanvasMask, ConstantMask
from napari_diffinfinite.slide.pyramid import downsample_image, downsample_labels
from napari_diffinfinite.slide.store import STATE_DIR, SlideStore

NAMES = ["unknown", "tumor", "stroma", "fat"]
COLORS = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (240, 240, 120)]
SHAPE = (1300, 1000)


def make_store(path, shape=SHAPE, **kwargs) -> SlideStore:
    kwargs.setdefault("pixel_size_um", 0.5)
    kwargs.setdefault("provenance", {"seed": 7, "omega": 2.0, "steps": 250})
    return SlideStore.create(path, shape, class_names=NAMES, class_colors=COLORS, **kwargs)


def slide_pixels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, *shape), dtype=np.uint8)


def write_all_tiles(store: SlideStore, pixels: np.ndarray, seed=0) -> None:
    t = store.tile
    origins = [(y, x) for y in range(0, store.shape[0], t) for x in range(0, store.shape[1], t)]
    for i in np.random.default_rng(seed).permutation(len(origins)):  # any order gives the same pyramid
        y, x = origins[i]
        store.write_tile(y, x, pixels[:, y : y + t, x : x + t])


@pytest.fixture
def store(tmp_path) -> SlideStore:
    return make_store(tmp_path / "slide.zarr")


@pytest.fixture
def filled(tmp_path):
    """A complete small slide: image tiles and labels written."""
    s = make_store(tmp_path / "slide.zarr")
    pixels = slide_pixels(SHAPE)
    write_all_tiles(s, pixels)
    canvas = np.random.default_rng(1).integers(0, len(NAMES), (13, 10), dtype=np.uint8)
    s.write_labels(CanvasMask(canvas, SHAPE))
    return s, pixels, canvas


# -- create / open -------------------------------------------------------------------------


def test_create_then_open_round_trip(store):
    assert store.shape == SHAPE
    assert store.level_shapes == [(1300, 1000), (650, 500), (325, 250)]
    assert store.num_levels == 3 and store.tile == 512
    for k, (h, w) in enumerate(store.level_shapes):
        assert store.image_level(k).shape == (3, h, w)
        assert store.image_level(k).chunks == (3, 512, 512)
        assert store.image_level(k).dtype == np.uint8
        assert store.label_level(k).shape == (h, w)
        assert store.label_level(k).chunks == (512, 512)

    reopened = SlideStore.open(store.path)
    assert reopened.shape == SHAPE and reopened.level_shapes == store.level_shapes
    assert reopened.class_names == NAMES
    assert reopened.class_colors == COLORS
    assert reopened.pixel_size_um == 0.5

    store.close()  # one writer at a time
    writable = SlideStore.open(store.path, mode="r+")
    writable.write_tile(1024, 512, np.full((3, 276, 488), 9, np.uint8))  # the bottom-right tile
    assert (reopened.read_region(0, 1024, 1300, 512, 1000) == 9).all()


def test_store_is_zarr_format_2_with_slash_chunk_keys(store):
    assert (store.path / ".zgroup").exists() and not (store.path / "zarr.json").exists()
    zarray = json.loads((store.path / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "zstd"


def test_provenance_fields(store):
    prov = store.provenance
    assert prov["synthetic"] is True
    assert prov["software"] == "napari-diffinfinite" and prov["version"] == __version__
    assert prov["seed"] == 7 and prov["omega"] == 2.0 and prov["steps"] == 250
    assert prov["class_names"] == NAMES
    assert prov["class_colors"] == [list(c) for c in COLORS]
    assert prov["pixel_size_um"] == 0.5
    assert prov["complete"] is False
    assert prov["created"].startswith("20")


def test_caller_cannot_make_a_slide_non_synthetic(tmp_path):
    s = make_store(tmp_path / "s.zarr", provenance={"synthetic": False})
    assert s.provenance["synthetic"] is True
    with pytest.raises(StoreError, match="synthetic"):
        s.update_provenance(synthetic=False)


def test_update_provenance_and_mark_complete_persist(store):
    store.update_provenance(model_sha256={"image": "ab" * 32}, shape=(3, 4))
    store.mark_complete()
    prov = SlideStore.open(store.path).provenance
    assert prov["complete"] is True
    assert prov["model_sha256"] == {"image": "ab" * 32} and prov["shape"] == [3, 4]
    assert prov["seed"] == 7


def test_multiscales_and_omero_metadata(store):
    attrs = zarr.open_group(store.path, mode="r").attrs.asdict()
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4"
    assert [(a["name"], a["type"]) for a in ms["axes"]] == [("c", "channel"), ("y", "space"), ("x", "space")]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    channels = attrs["omero"]["channels"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
    assert all(c["window"]["start"] == 0 and c["window"]["end"] == 255 for c in channels)

    labels = zarr.open_group(store.path / "labels", mode="r").attrs.asdict()
    assert labels == {"labels": ["tissue"]}
    tissue = zarr.open_group(store.path / "labels" / "tissue", mode="r").attrs.asdict()
    image_label = tissue["image-label"]
    assert image_label["version"] == "0.4" and image_label["source"] == {"image": "../../"}
    assert [p["class"] for p in image_label["properties"]] == NAMES
    assert [c["rgba"][:3] for c in image_label["colors"]] == [list(c) for c in COLORS]
    assert [a["name"] for a in tissue["multiscales"][0]["axes"]] == ["y", "x"]


def test_no_pixel_size_means_unitless_unit_scale(tmp_path):
    s = make_store(tmp_path / "s.zarr", pixel_size_um=None)
    (ms,) = zarr.open_group(s.path, mode="r").attrs["multiscales"]
    assert all("unit" not in a for a in ms["axes"])
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    assert SlideStore.open(s.path).pixel_size_um is None


def test_create_existing_path_needs_overwrite(store):
    store.update_provenance(marker=1)
    with pytest.raises(StoreError, match="--resume.*--overwrite"):
        make_store(store.path)
    assert SlideStore.open(store.path).provenance["marker"] == 1
    store.close()  # one writer at a time
    replaced = make_store(store.path, overwrite=True)
    assert "marker" not in replaced.provenance


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("keep me")
    with pytest.raises(StoreError, match="refusing to overwrite .*not written by this tool"):
        make_store(folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "keep me"


def test_create_in_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        make_store(tmp_path / "no" / "such" / "slide.zarr")


def test_create_rejects_mismatched_classes(tmp_path):
    with pytest.raises(StoreError, match="colour"):
        SlideStore.create(tmp_path / "s.zarr", SHAPE, class_names=NAMES, class_colors=COLORS[:2], provenance={})
    assert not (tmp_path / "s.zarr").exists()


def test_create_too_large_slide(tmp_path):
    with pytest.raises(StoreError, match="too large"):
        make_store(tmp_path / "s.zarr", shape=(512 * 2**9 + 1, 100))
    assert not (tmp_path / "s.zarr").exists()


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        SlideStore.open(tmp_path / "missing.zarr")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="not a slide store"):
        SlideStore.open(tmp_path / "file.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="not a slide store: no OME-Zarr multiscales metadata"):
        SlideStore.open(tmp_path / "empty.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=2)
    with pytest.raises(StoreError, match="not a slide store: no OME-Zarr multiscales metadata"):
        SlideStore.open(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match="mode"):
        SlideStore.open(tmp_path / "plain.zarr", mode="w")


def test_read_only_store_refuses_writes(store):
    ro = SlideStore.open(store.path)
    with pytest.raises(StoreError, match="read-only"):
        ro.write_tile(0, 0, np.zeros((3, 512, 512), np.uint8))
    with pytest.raises(StoreError, match="read-only"):
        ro.save_state({}, {})


@pytest.mark.parametrize("fmt_name", ["0.4", "0.5"])
def test_store_written_by_ome_zarr_py_opens_read_only(tmp_path, fmt_name):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if fmt_name == "0.4" else FormatV05()
    path = tmp_path / "other.zarr"
    image = slide_pixels((300, 200))
    group = zarr.open_group(path, mode="w", zarr_format=fmt.zarr_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no scale for axis c"
        write_image(
            image,
            group,
            scale_factors=(2,),
            fmt=fmt,
            axes="cyx",
            scale={"y": 0.25, "x": 0.25},
            axes_units={"y": "micrometer", "x": "micrometer"},
        )
    other = SlideStore.open(path)
    assert other.level_shapes == [(300, 200), (150, 100)]
    assert other.pixel_size_um == 0.25
    assert other.provenance == {} and other.class_names == []
    np.testing.assert_array_equal(other.read_region(0, 10, 60, 20, 90), image[:, 10:60, 20:90].transpose(1, 2, 0))
    with pytest.raises(StoreError, match="not written by napari-diffinfinite"):
        SlideStore.open(path, mode="r+")


# -- tiles and labels ----------------------------------------------------------------------


@pytest.mark.parametrize("tile", [512, 128])
def test_every_level_is_the_downsample_of_level_0(tmp_path, tile):
    s = make_store(tmp_path / "s.zarr", tile=tile)
    assert s.num_levels == (3 if tile == 512 else 5)
    pixels = slide_pixels(SHAPE, seed=tile)
    write_all_tiles(s, pixels, seed=tile)
    level0 = s.image_level(0)[...]
    np.testing.assert_array_equal(level0, pixels)
    for k in range(1, s.num_levels):
        np.testing.assert_array_equal(s.image_level(k)[...], downsample_image(level0, 2**k), err_msg=f"level {k}")


def test_levels_fill_in_as_tiles_land(store):
    tile = np.full((3, 512, 512), 100, np.uint8)
    store.write_tile(512, 512, tile[:, :, :488])  # right-edge tile: 1000 - 512 = 488 wide
    assert (store.image_level(1)[:, 256:512, 256:500] == 100).all()
    assert (store.image_level(1)[:, :256, :] == 0).all()
    assert (store.image_level(2)[:, 128:256, 128:250] == 100).all()


def test_read_region_is_yxc(filled):
    s, pixels, _ = filled
    np.testing.assert_array_equal(
        s.read_region(0, 100, 700, 450, 1000), pixels[:, 100:700, 450:1000].transpose(1, 2, 0)
    )
    np.testing.assert_array_equal(s.read_region(2, 0, 325, 0, 250), s.image_level(2)[...].transpose(1, 2, 0))
    with pytest.raises(StoreError, match="outside"):
        s.read_region(1, 0, 651, 0, 10)
    with pytest.raises(StoreError, match="level 3"):
        s.image_level(3)


@pytest.mark.parametrize(
    ("y0", "x0", "shape"),
    [
        (1, 0, (3, 512, 512)),
        (0, 0, (3, 512, 500)),
        (1024, 0, (3, 512, 512)),
        (2048, 0, (3, 1, 1)),
        (0, 0, (4, 512, 512)),
    ],
)
def test_write_tile_validates_position_and_shape(store, y0, x0, shape):
    with pytest.raises(StoreError):
        store.write_tile(y0, x0, np.zeros(shape, np.uint8))


def test_write_tile_refuses_non_uint8(store):
    with pytest.raises(StoreError, match="uint8"):
        store.write_tile(0, 0, np.zeros((3, 512, 512), np.float32))


def test_labels_match_mask_and_its_downsample(filled):
    s, _, canvas = filled
    mask = CanvasMask(canvas, SHAPE)
    level0 = s.label_level(0)[...]
    np.testing.assert_array_equal(level0, mask.region(0, SHAPE[0], 0, SHAPE[1]))
    for k in range(1, s.num_levels):
        np.testing.assert_array_equal(s.label_level(k)[...], downsample_labels(level0, 2**k))


def test_write_labels_reports_progress_and_can_be_cancelled(store):
    events = []
    store.write_labels(ConstantMask(2, SHAPE), progress=events.append)
    assert {e.stage for e in events} == {"pyramid"}
    assert events[-1].done == events[-1].total == 6 + 2 + 1  # chunks of levels 0, 1, 2
    assert (store.label_level(2)[...] == 2).all()

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        store.write_labels(ConstantMask(1, SHAPE), cancel=token)
    assert (store.label_level(0)[...] == 2).all()


def test_write_labels_refuses_a_mask_of_another_size(store):
    with pytest.raises(StoreError, match="mask covers"):
        store.write_labels(ConstantMask(1, (100, 100)))


def test_ome_zarr_models_validates_image_and_labels(filled):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.exceptions import ValidationWarning
    from ome_zarr_models.v04 import Image, ImageLabel, Labels

    s = filled[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)  # as `ome-zarr-models validate` does
        assert isinstance(open_ome_zarr(s.path, version="0.4"), Image)
        Labels.from_zarr(zarr.open_group(s.path / "labels", mode="r"))
        label = ImageLabel.from_zarr(zarr.open_group(s.path / "labels" / "tissue", mode="r"))
    assert [p.label_value for p in label.attributes.image_label.properties] == [0, 1, 2, 3]


def test_ome_zarr_py_reads_image_and_labels_back(filled):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    s, pixels, _ = filled
    nodes = list(Reader(parse_url(str(s.path), fmt=FormatV04()))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    label = next(n for n in nodes if n.load(Label))
    assert len(image.data) == len(label.data) == s.num_levels
    np.testing.assert_array_equal(np.asarray(image.data[0]), pixels)
    for k in range(s.num_levels):
        np.testing.assert_array_equal(np.asarray(image.data[k]), s.image_level(k)[...])
        np.testing.assert_array_equal(np.asarray(label.data[k]), s.label_level(k)[...])


# -- resume state --------------------------------------------------------------------------


def state(step: int) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(step)
    arrays = {
        "latent": rng.standard_normal((4, 70, 90)).astype(np.float32),
        "times": rng.integers(0, 250, (70, 90)).astype(np.int16),
        "key": np.array(2**63 + step, dtype=np.uint64),
        "empty": np.zeros((0, 3), np.float64),
        "done": rng.random(5) > 0.5,
    }
    return arrays, {"step": step, "seed": 7, "offsets": [[1, 2], [3, 4]]}


def assert_state_equal(loaded, expected):
    arrays, meta = loaded
    assert meta == expected[1]
    assert arrays.keys() == expected[0].keys()
    for name, array in expected[0].items():
        assert arrays[name].dtype == array.dtype and arrays[name].shape == array.shape
        np.testing.assert_array_equal(arrays[name], array)


def test_save_and_load_state_round_trip(store):
    assert store.load_state() is None
    for step in (1, 2, 3):  # cycles through both slots
        store.save_state(*state(step))
        assert_state_equal(store.load_state(), state(step))
    assert_state_equal(SlideStore.open(store.path).load_state(), state(3))


def test_crash_mid_save_leaves_previous_state(store, monkeypatch):
    store.save_state(*state(1))
    store.save_state(*state(2))

    def die(*args, **kwargs):
        raise RuntimeError("killed before the pointer was written")

    monkeypatch.setattr(SlideStore, "_commit_state_pointer", staticmethod(die))
    with pytest.raises(RuntimeError, match="killed"):
        store.save_state(*state(3))
    assert_state_equal(SlideStore.open(store.path).load_state(), state(2))

    monkeypatch.undo()
    store.save_state(*state(4))
    assert_state_equal(store.load_state(), state(4))


def test_save_state_refuses_unstorable_values(store):
    with pytest.raises(StoreError, match="numeric"):
        store.save_state({"names": np.array(["a"], dtype=object)}, {})
    with pytest.raises(StoreError, match="name"):
        store.save_state({"a/b": np.zeros(1)}, {})
    with pytest.raises(StoreError, match="JSON"):
        store.save_state({}, {"fn": print})
    assert store.load_state() is None


def test_canvas_round_trip(store):
    assert store.load_canvas() is None
    canvas = np.random.default_rng(5).integers(0, 4, (37, 29), dtype=np.uint8)
    store.save_canvas(canvas)
    store.save_canvas(canvas[:20])  # replacing it is fine
    np.testing.assert_array_equal(SlideStore.open(store.path).load_canvas(), canvas[:20])
    with pytest.raises(StoreError, match="uint8"):
        store.save_canvas(canvas.astype(np.int32))


def test_store_with_state_still_validates(filled):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.exceptions import ValidationWarning

    s = filled[0]
    s.save_state(*state(1))
    s.save_canvas(np.zeros((4, 4), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)
        open_ome_zarr(s.path, version="0.4")
    assert SlideStore.open(s.path).shape == SHAPE


def test_only_the_current_state_slot_stays_on_disk(tmp_path):
    store = make_store(tmp_path / "s.zarr", (64, 64))
    for step in range(3):
        store.save_state({"latent": np.full((2, 4, 4), step, np.float32)}, {"step": step})
        slots = sorted(p.name for p in (tmp_path / "s.zarr" / STATE_DIR).iterdir() if p.name.startswith("state_"))
        assert len(slots) == 1, slots
        arrays, meta = store.load_state()
        assert meta["step"] == step and (arrays["latent"] == step).all()
    store.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [("pixel_size_um", "abc"), ("pixel_size_um", -1), ("class_colors", "red"), ("class_colors", [[1, 2]]),
     ("class_names", {"a": 1})],
)  # fmt: skip
def test_damaged_provenance_is_one_message_naming_the_field(store, field, value):
    """``"class_colors": "red"`` used to fail as ``invalid literal for int() with base 10: 'r'``."""

    meta = store.path / ".zattrs"
    attrs = json.loads(meta.read_text())
    attrs["diffinfinite"][field] = value
    meta.write_text(json.dumps(attrs))
    with pytest.raises(StoreError, match=f"provenance field '{field}' is .* damaged"):
        SlideStore.open(store.path)


def test_label_levels_claiming_another_shape_are_refused(filled):
    """A labels .zarray claiming 10^6 x 10^6 px made GeoJSON export allocate 931 GiB."""
    store = filled[0]
    store.close()
    meta = store.path / "labels" / "tissue" / "0" / ".zarray"
    zarray = json.loads(meta.read_text())
    zarray["shape"] = [1_000_000, 1_000_000]
    meta.write_text(json.dumps(zarray))
    with pytest.raises(StoreError, match="label levels .* do not match the image levels"):
        SlideStore.open(store.path)


def test_a_read_larger_than_the_free_memory_is_one_message(filled, monkeypatch):
    from napari_diffinfinite.slide import store as store_module

    monkeypatch.setattr(store_module, "READ_MEMORY_SHARE", 1e-12)
    s = filled[0]
    with pytest.raises(StoreError, match="more than half the free memory"):
        s.read_region(0, 0, 64, 0, 64)


@pytest.mark.parametrize(
    ("dtype", "chunks", "match"),
    [("f8", (3, 64, 64), "float64, not 8-bit"), ("u1", (3, 100_000, 100_000), "chunks are at most")],
)
def test_a_level_this_tool_cannot_read_in_bounded_memory_is_one_message(tmp_path, dtype, chunks, match):
    """A float64 image or chunks of gigabytes failed deep in numpy ("cannot reshape")."""
    path = tmp_path / "odd.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(3, 128, 128), dtype=dtype, chunks=chunks)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    with pytest.raises(StoreError, match=match):
        SlideStore.open(path)
