"""Labels -> QuPath GeoJSON -> labels, and GeoJSON as QuPath writes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import shape as to_shape

from napari_diffinfinite.errors import MaskError
from napari_diffinfinite.slide.geojson import (
    geojson_to_labels,
    labels_to_features,
    labels_to_geojson,
    normalise_color,
    read_geojson_features,
)
from napari_diffinfinite.slide.masks import CanvasMask

NAMES = ["unknown", "Tumor", "Stroma", "Necrosis"]
COLORS = [(0, 0, 0), (200, 0, 0), (0, 150, 0), (90, 90, 90)]


def tricky_labels() -> np.ndarray:
    """Holes, an island in a hole, pixels touching only at corners, blobs at the border."""
    rng = np.random.default_rng(1)
    labels = np.zeros((240, 320), np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    r = np.hypot(yy - 120, xx - 140)
    labels[(r < 90) & (r >= 40)] = 1
    labels[r < 15] = 2
    labels[0:30, 280:320] = 3
    labels[200, 10] = labels[201, 11] = labels[202, 12] = 1  # a diagonal chain
    labels[100:104, 250:254] = 1
    labels[102, 252] = 0  # one-pixel hole
    blobs = ndimage.zoom(rng.random((12, 16)), 20, order=1) > 0.75
    labels[blobs & (labels == 0)] = 2
    return labels


def test_round_trip_is_exact_at_the_traced_resolution():
    labels = tricky_labels()
    collection = labels_to_geojson(labels, class_names=NAMES, class_colors=COLORS)
    imported = geojson_to_labels(collection, class_names=NAMES, slide_shape=labels.shape, downsample=1)
    np.testing.assert_array_equal(imported.canvas, labels)
    assert imported.painted == {"Tumor": 1, "Stroma": 1, "Necrosis": 1}


def test_features_look_like_qupath_annotations():
    labels = tricky_labels()
    features = labels_to_features(labels, class_names=NAMES, class_colors=COLORS)
    json.dumps(features)  # plain JSON types only
    by_name = {f["properties"]["classification"]["name"]: f for f in features}
    tumour = by_name["Tumor"]
    assert tumour["type"] == "Feature" and isinstance(tumour["id"], str)
    assert tumour["properties"]["objectType"] == "annotation"
    assert tumour["properties"]["classification"]["color"] == [200, 0, 0]
    geometry = to_shape(tumour["geometry"])
    assert tumour["geometry"]["type"] == "MultiPolygon" and geometry.is_valid
    ring = max(geometry.geoms, key=lambda g: g.area)
    assert len(ring.interiors) == 1  # the ring's hole (the island is another class)
    # Area matches the pixel count exactly except at diagonal steps (half pixels).
    assert abs(geometry.area - (labels == 1).sum()) < 0.02 * (labels == 1).sum()
    minx, miny, maxx, maxy = shapely.bounds(to_shape(by_name["Necrosis"]["geometry"]))
    assert (minx, miny, maxx, maxy) == (280.0, 0.0, 320.0, 30.0)  # pixel corners, level 0


def test_split_regions_gives_one_feature_per_region():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:5, 2:5] = 1
    labels[10:15, 10:15] = 1
    labels[12, 12] = 0
    features = labels_to_features(labels, class_names=NAMES, split_regions=True)
    assert len(features) == 2
    assert {len(f["geometry"]["coordinates"]) for f in features} == {1, 2}  # one with a hole


def test_scale_offset_and_clip_map_to_level_zero():
    labels = tricky_labels()
    coarse = labels[::4, ::4]
    collection = labels_to_geojson(coarse, class_names=NAMES, scale=4, offset=(100, 50), clip=(0, 0, 1000, 700))
    for feature in collection["features"]:
        minx, miny, maxx, maxy = to_shape(feature["geometry"]).bounds
        assert minx >= 100 and miny >= 50 and maxx <= 100 + 320 and maxy <= 50 + 240
    imported = geojson_to_labels(collection, class_names=NAMES, slide_shape=(700, 1000), downsample=1)
    window = imported.canvas[50:290, 100:420]
    nearest = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)
    assert (window != nearest).mean() < 0.01  # differences only at boundary pixels
    assert not imported.canvas[:50].any() and not imported.canvas[:, :100].any()

    # an import with the origin of the offset undoes it exactly
    shifted = geojson_to_labels(collection, class_names=NAMES, slide_shape=(240, 320), downsample=1, origin=(100, 50))
    assert np.array_equal(shifted.canvas, imported.canvas[50:290, 100:420])


def test_import_at_a_downsample_matches_canvas_mask_geometry():
    labels = tricky_labels()
    collection = labels_to_geojson(labels, class_names=NAMES)
    imported = geojson_to_labels(collection, class_names=NAMES, slide_shape=labels.shape, downsample=4)
    assert imported.canvas.shape == (60, 80)
    restretched = CanvasMask(imported.canvas, labels.shape).region(0, 240, 0, 320)
    assert (restretched != labels).mean() < 0.06


QUPATH_FILE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "2f0f8a6b-8a52-4a86-9a53-0b4c4d6a6a11",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[10, 10], [90, 10], [90, 70], [10, 70], [10, 10]],
                    [[30, 30], [50, 30], [50, 50], [30, 50], [30, 30]],
                ],
            },
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        },
        {   # QuPath 0.2 style: colorRGB, isLocked, measurements, a MultiPolygon
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[100.5, 5.5], [140.5, 5.5], [140.5, 25.5], [100.5, 25.5], [100.5, 5.5]]],
                    [[[60, 60], [80, 60], [80, 95], [60, 95], [60, 60]]],
                ],
            },
            "properties": {
                "classification": {"name": "stroma", "colorRGB": -16738048},
                "isLocked": False,
                "measurements": [],
            },
        },
        {   # an ellipse exported as a polygon, derived class names
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[
                    [120 + 10 * np.cos(t), 70 + 8 * np.sin(t)]
                    for t in np.linspace(0, 2 * np.pi, 33)
                ]],
            },
            "properties": {"objectType": "annotation", "classification": {"names": ["Necrosis"]}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
         "properties": {"objectType": "annotation"}},
    ],
}  # fmt: skip


def _qupath_text() -> str:
    return json.dumps(QUPATH_FILE, default=float)


def test_imports_geojson_written_the_way_qupath_writes_it(tmp_path):
    path = tmp_path / "annotations.geojson"
    path.write_text(_qupath_text())
    imported = geojson_to_labels(path, class_names=NAMES, slide_shape=(100, 160), downsample=1)
    canvas = imported.canvas
    assert canvas[20, 20] == 1 and canvas[40, 40] == 0  # hole stays a hole
    assert canvas[69, 89] == 1 and canvas[70, 90] == 0  # pixel centres decide the edge
    assert canvas[15, 120] == 2 and canvas[80, 70] == 2  # case-insensitive "stroma"
    assert canvas[65, 70] == 2  # later features win where they overlap
    assert canvas[70, 120] == 3
    assert imported.not_areas == 1 and imported.unclassified == 1
    assert imported.painted == {"Tumor": 1, "Stroma": 1, "Necrosis": 1}
    assert "points/lines" in imported.summary()


def test_accepts_lists_single_features_and_text():
    features = QUPATH_FILE["features"][:1]
    assert len(read_geojson_features(features)) == 1
    assert len(read_geojson_features(features[0])) == 1
    assert len(read_geojson_features(json.dumps(features[0]))) == 1
    assert len(read_geojson_features(features[0]["geometry"])) == 1


def test_unknown_class_names_are_reported():
    bad = json.loads(_qupath_text())
    bad["features"][0]["properties"]["classification"]["name"] = "Lymphocytes"
    with pytest.raises(MaskError, match="'Lymphocytes'.*1 = 'Tumor'"):
        geojson_to_labels(bad, class_names=NAMES, slide_shape=(100, 160))
    imported = geojson_to_labels(bad, class_names=NAMES, slide_shape=(100, 160), on_unknown="skip")
    assert imported.unknown == {"Lymphocytes": 1} and imported.canvas[20, 20] == 0


def test_rejects_what_is_not_geojson(tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        read_geojson_features(tmp_path / "missing.geojson")
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(MaskError, match="not valid JSON"):
        read_geojson_features(tmp_path / "broken.geojson")
    with pytest.raises(MaskError, match="FeatureCollection"):
        read_geojson_features({"type": "Topology"})


def test_default_canvas_is_bounded():
    imported = geojson_to_labels(QUPATH_FILE["features"][:1], class_names=NAMES, slide_shape=(20000, 30000))
    assert max(imported.canvas.shape) <= 4096


def test_colours():
    assert normalise_color("#c80000") == [200, 0, 0]
    assert normalise_color(-16738048) == [0, 153, 0]  # 0xFF009900, QuPath ARGB
    assert normalise_color((1, 2, 3, 255)) == [1, 2, 3]


def test_hostile_json_is_one_mask_error(tmp_path):
    """Nesting 100000 deep raised RecursionError, a NaN coordinate a GEOSException, both as
    "internal error"."""
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MaskError, match="not valid JSON"):
        read_geojson_features(deep)
    square = [[[0, 0], [10, 0], [10, float("nan")], [0, 10], [0, 0]]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
               "properties": {"classification": {"name": "tumour"}}}  # fmt: skip
    with pytest.raises(MaskError, match="not finite"):
        geojson_to_labels([feature], class_names=["unknown", "tumour"], slide_shape=(32, 32))


def test_unknown_class_names_are_cut_short_in_the_message():
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
         "properties": {"classification": {"name": f"{i}" + "x" * 10_000}}}
        for i in range(30)
    ]  # fmt: skip
    with pytest.raises(MaskError, match="and 20 more") as info:
        geojson_to_labels(features, class_names=["unknown", "tumour"], slide_shape=(32, 32))
    assert len(str(info.value)) < 2000
