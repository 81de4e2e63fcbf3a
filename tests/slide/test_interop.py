"""Interop with other tools' readers: QuPath 0.6 (OMEZarrReader), ome-zarr-models, OpenSlide.

Each test here failed before the fix it covers (issue 9, items 1-3, 6-8).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffinfinite.slide.export import export_slide
from napari_diffinfinite.slide.geojson import geojson_to_labels
from napari_diffinfinite.slide.masks import mask_file_kind
from napari_diffinfinite.slide.store import SlideStore

from .conftest import CLASS_NAMES, PIXEL_SIZE, SLIDE_SHAPE, make_store

OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


# --------------------------------------------------------------------------- a recursive reader


def zarr_arrays(root: Path) -> list[str]:
    """Every zarr array under ``root`` (format 2 or 3), as Bio-Formats' OMEZarrReader lists them."""
    found = []
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if ".zarray" in files:
            found.append(rel)
        elif "zarr.json" in files:
            meta = json.loads(Path(folder, "zarr.json").read_text())
            if meta.get("node_type") == "array":
                found.append(rel)
    return sorted(found)


def multiscale_arrays(root: Path) -> list[str]:
    """The level arrays that the image's and the labels' multiscales metadata list."""
    import zarr

    group = zarr.open_group(root, mode="r")

    def levels(g, prefix: str) -> list[str]:
        attrs = g.attrs.asdict()
        attrs = attrs.get("ome", attrs)
        return [f"{prefix}{d['path']}" for m in attrs.get("multiscales", []) for d in m["datasets"]]

    paths = levels(group, "")
    if "labels" in group:
        labels = group["labels"].attrs.asdict()
        for name in labels.get("ome", labels).get("labels", []):
            paths += levels(group[f"labels/{name}"], f"labels/{name}/")
    return sorted(paths)


def assert_qupath_readable(root: Path, shape: tuple[int, int], version: str = "0.4") -> None:
    """What QuPath 0.6 needs: OME-XML with Red/Green/Blue and µm pixel size, layout 3, no stray arrays."""
    xml = ET.parse(root / "OME" / "METADATA.ome.xml").getroot()
    pixels = xml.find(f"{OME}Image/{OME}Pixels")
    assert pixels is not None
    assert (pixels.get("SizeX"), pixels.get("SizeY"), pixels.get("SizeC")) == (str(shape[1]), str(shape[0]), "3")
    assert float(pixels.get("PhysicalSizeX")) == PIXEL_SIZE == float(pixels.get("PhysicalSizeY"))
    assert pixels.get("PhysicalSizeXUnit") == "µm" == pixels.get("PhysicalSizeYUnit")
    assert [c.get("Name") for c in pixels.findall(f"{OME}Channel")] == ["Red", "Green", "Blue"]
    import zarr

    attrs = zarr.open_group(root, mode="r").attrs.asdict()
    ome = attrs if version == "0.4" else attrs["ome"]
    assert ome["bioformats2raw.layout"] == 3
    assert [c["label"] for c in ome["omero"]["channels"]] == ["Red", "Green", "Blue"]
    assert zarr_arrays(root) == multiscale_arrays(root)  # nothing else a reader would list


def validate_cli(path: Path) -> None:
    cli = shutil.which("ome-zarr-models") or str(Path(os.sys.executable).with_name("ome-zarr-models"))
    done = subprocess.run([cli, "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- item 6: QuPath 0.6


@pytest.mark.slow
def test_finished_store_is_image_labels_and_metadata_for_qupath(tmp_path):
    store = make_store(tmp_path / "slide.zarr", complete=False)
    store.save_state({"latent": np.zeros((4, 300, 400), np.float32)}, {"step": 3})
    store.save_canvas(np.ones((10, 10), np.uint8))
    assert zarr_arrays(store.path) == multiscale_arrays(store.path)  # the state is no zarr array
    store.mark_complete()
    assert_qupath_readable(store.path, SLIDE_SHAPE)
    assert not store.writable and store.load_state() is None
    assert sorted(p.name for p in (store.path / "diffinfinite").iterdir()) == ["canvas.npy"]
    np.testing.assert_array_equal(store.load_canvas(), np.ones((10, 10), np.uint8))
    validate_cli(store.path)


def test_mark_complete_keeps_state_when_asked(tmp_path):
    store = make_store(tmp_path / "slide.zarr", (200, 300), complete=False)
    store.save_state({"latent": np.arange(6, dtype=np.float32)}, {"step": 3})
    store.mark_complete(keep_state=True)
    arrays, meta = SlideStore.open(store.path).load_state()
    np.testing.assert_array_equal(arrays["latent"], np.arange(6, dtype=np.float32))
    assert meta == {"step": 3} and SlideStore.open(store.path).provenance["complete"] is True


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_export_is_readable_by_qupath(slide_store, tmp_path, version):
    out = tmp_path / "region.ome.zarr"
    export_slide(slide_store, out, "ome-zarr", region=(100, 50, 700, 600), ngff_version=version)
    assert_qupath_readable(out, (600, 700), version)
    validate_cli(out)


# --------------------------------------------------------------------------- item 1: label TIFF as mask


@pytest.mark.parametrize("fmt, name", [("tiff", "s.tif"), ("ome-tiff", "s.ome.tif")])
def test_exported_label_tiff_reads_back_as_labels(slide_store, slide_labels, tmp_path, fmt, name):
    pytest.importorskip("openslide")
    from napari_diffinfinite.engine.layout import read_layout

    result = export_slide(slide_store, tmp_path / name, fmt, compression="zlib")
    image, labels = result.files
    assert mask_file_kind(labels).kind == "label image"
    assert mask_file_kind(image).kind == "real slide"
    source, info = read_layout(labels, SLIDE_SHAPE, CLASS_NAMES)
    assert info["type"] == "label image"
    np.testing.assert_array_equal(source.region(0, SLIDE_SHAPE[0], 0, SLIDE_SHAPE[1]), slide_labels)


def test_vendor_slide_is_a_real_slide(cmu_svs):
    kind = mask_file_kind(cmu_svs)
    assert kind.kind == "real slide" and "aperio" in kind.reason


def test_png_and_geojson_kinds(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")
    assert mask_file_kind(tmp_path / "m.png").kind == "label image"
    assert mask_file_kind(tmp_path / "a.geojson").kind == "geojson"


# --------------------------------------------------------------------------- item 2: GeoJSON import


def square(x0: float, y0: float, size: float, object_type: str | None, classification: dict) -> dict:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    properties: dict = {"classification": classification}
    if object_type is not None:
        properties["objectType"] = object_type
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def qupath_all_objects() -> dict:
    """What QuPath's "export all objects" writes: an annotation and the cells detected in it."""
    features = [square(0, 0, 40, "annotation", {"name": "tumour"})]
    features += [square(5 + 10 * i, 5, 4, "cell", {"name": "stroma"}) for i in range(3)]
    features += [square(5, 25, 4, "detection", {"name": "fat"})]
    return {"type": "FeatureCollection", "features": features}


def test_geojson_import_takes_annotations_only_by_default():
    imported = geojson_to_labels(qupath_all_objects(), class_names=CLASS_NAMES, slide_shape=(50, 50), downsample=1)
    assert set(np.unique(imported.canvas)) == {0, 1}  # the cells are not painted
    assert imported.painted == {"tumour": 1}
    assert imported.skipped_objects == {"cell": 3, "detection": 1}
    assert "skipped 3 cells, 1 detection" in imported.summary()


def test_geojson_import_can_include_detections():
    imported = geojson_to_labels(
        qupath_all_objects(), class_names=CLASS_NAMES, slide_shape=(50, 50), downsample=1,
        object_types=("annotation", "cell", "detection"),
    )  # fmt: skip
    assert set(np.unique(imported.canvas)) == {0, 1, 2, 3}
    assert imported.skipped_objects == {}


def test_derived_classes_match_their_base_class_and_are_reported():
    features = [
        square(0, 0, 10, "annotation", {"names": ["stroma", "Positive"], "color": [1, 2, 3]}),
        square(20, 0, 10, "annotation", {"name": "fat: Negative"}),
        square(0, 20, 10, "annotation", {"names": ["dermis", "Positive"]}),
    ]
    imported = geojson_to_labels(
        features, class_names=CLASS_NAMES, slide_shape=(40, 40), downsample=1, on_unknown="skip"
    )
    assert imported.canvas[5, 5] == 2 and imported.canvas[5, 25] == 3
    assert imported.derived == {"stroma: Positive": "stroma", "fat: Negative": "fat"}
    assert imported.unknown == {"dermis: Positive": 1}
    assert "'stroma: Positive' as 'stroma'" in imported.summary()


# --------------------------------------------------------------------------- item 3: feature ids


def test_exported_feature_ids_are_unique_per_export(slide_store, tmp_path):
    ids = []
    for name in ("a.geojson", "b.geojson"):
        export_slide(slide_store, tmp_path / name, "geojson", region=(0, 0, 800, 700))
        ids.append([f["id"] for f in json.loads((tmp_path / name).read_text())["features"]])
    assert len(ids[0]) == len(set(ids[0])) > 1
    assert not set(ids[0]) & set(ids[1])


# --------------------------------------------------------------------------- item 7: OpenSlide levels


def write_generic_tiff(path: Path, level0: np.ndarray, level1_shape: tuple[int, int]) -> np.ndarray:
    """A tiled two-level TIFF whose level 1 is not an exact power-of-two downsample."""
    from PIL import Image

    h, w = level1_shape
    level1 = np.asarray(Image.fromarray(level0).resize((w, h), Image.Resampling.BOX))
    with tifffile.TiffWriter(path) as tif:
        for k, image in enumerate((level0, level1)):
            tif.write(image, photometric="rgb", tile=(256, 256), compression="zlib", subfiletype=1 if k else 0)
    return level1


def test_non_power_of_two_level_reads_as_openslide_reads_it(tmp_path):
    openslide = pytest.importorskip("openslide")
    from napari_diffinfinite.slide.openslide_reader import open_real_slide

    rng = np.random.default_rng(3)
    level0 = rng.integers(0, 256, (2600, 4100, 3), dtype=np.uint8)
    path = tmp_path / "scanner.tif"
    write_generic_tiff(path, level0, (649, 1023))  # downsamples 4.006 and 4.008: 4.007
    reference = openslide.OpenSlide(str(path))
    assert reference.level_downsamples[1] != 4.0
    whole = np.asarray(reference.read_region((0, 0), 1, reference.level_dimensions[1]))[..., :3]
    with open_real_slide(path) as slide:
        chunked = slide.dask_levels(chunk=128)[1].compute(scheduler="synchronous")
    reference.close()
    np.testing.assert_array_equal(chunked, whole)


class _RecordingHandle:
    """Stands in for an OpenSlide handle: records where each read starts, returns its position."""

    def __init__(self) -> None:
        self.reads: list[tuple[tuple[int, int], int, tuple[int, int]]] = []

    def read_region(self, location, level, size):
        self.reads.append((location, level, size))
        w, h = size
        out = np.zeros((h, w, 4), np.uint8)
        out[..., 3] = 255
        out[..., 0] = location[0] % 251
        return out


def test_pieces_of_a_wide_level_start_where_openslide_starts_them():
    from napari_diffinfinite.slide.openslide_reader import RealSlide

    handle = _RecordingHandle()
    slide = RealSlide(
        Path("x"), "generic-tiff", [(40000, 40000), (10000, 9999)], [1.0, 4.0003], None, {}, _handle=handle
    )
    block = slide.read_region(1, 100, 140, 4090, 4200)  # straddles the pieces at x = 0 and x = 4096
    starts = sorted({loc for loc, _, _ in handle.reads})
    # openslide.c: sx = x + col * 4096 * ds, truncated (4096 * 4.0003 = 16385.2288).
    assert starts == [(0, 0), (16385, 0)]
    assert (block[:, :6, 0] == 0).all() and (block[:, 6:, 0] == 16385 % 251).all()
    slide.read_region(1, 110, 130, 4100, 4110)  # inside a cached piece: no new read
    assert len(handle.reads) == 2


# --------------------------------------------------------------------------- item 8: pins


def test_pyproject_pins_the_versions_the_code_needs():
    from importlib.metadata import version

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[2]
    deps = {
        Requirement(d).name: Requirement(d)
        for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for name, needed in (("zarr", "3.1.3"), ("ome-zarr", "0.12")):
        floor = min(Version(s.version) for s in deps[name].specifier if s.operator == ">=")
        assert floor >= Version(needed), f"{name} must be pinned >= {needed}"
        assert Version(version(name)) in deps[name].specifier
