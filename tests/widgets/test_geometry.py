"""Where DiffInfinite layers sit in napari's world (pure: runs without napari)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.widgets._geometry import (
    auto_downsample,
    canvas_shape,
    canvas_transform,
    describe_length,
    export_origin,
    ngff_translation,
    region_from_corners,
    slide_translation,
    world_units,
)


def test_auto_downsample_keeps_canvas_paintable():
    assert auto_downsample((1024, 1024)) == 1
    assert auto_downsample((16384, 16384)) == 8
    assert auto_downsample((100000, 3000)) == 64
    assert canvas_shape((16384, 12000), 8) == (2048, 1500)


def test_canvas_transform_in_micrometres():
    # pixels: canvas pixel 0 covers slide pixels 0..7, its centre at slide pixel 3.5
    scale, translate = canvas_transform((16384, 16384), (2048, 2048))
    assert scale == (8.0, 8.0) and translate == (3.5, 3.5)
    # at 0.5 µm per slide pixel the same canvas spans 8192 µm, centre of pixel 0 at 1.75 µm
    scale, translate = canvas_transform((16384, 16384), (2048, 2048), 0.5)
    assert scale == (4.0, 4.0) and translate == (1.75, 1.75)
    np.testing.assert_allclose(np.asarray(scale) * 2048, 8192)
    assert world_units(0.5) == ("um", "um") and world_units(None) is None


def test_region_from_corners():
    assert region_from_corners([[10, 20], [60, 90]], (100, 100)) == (20, 10, 70, 50)
    assert region_from_corners([[60.4, 90.2], [9.6, 19.7]], (100, 100)) == (20, 10, 70, 50)
    assert region_from_corners([[-5, -5], [500, 30]], (100, 100)) == (0, 0, 30, 100)
    with pytest.raises(ValueError, match="draw it over the slide"):
        region_from_corners([[200, 200], [300, 300]], (100, 100))


def test_translation_from_ngff_or_the_export_record():
    ngff = {
        "multiscales": [
            {
                "coordinateTransformations": [{"type": "translation", "translation": [0, 10.0, 20.0]}],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1, 0.5, 0.5]},
                            {"type": "translation", "translation": [0, 1.0, 2.0]},
                        ],
                    }
                ],
            }
        ]
    }
    assert ngff_translation(ngff) == (11.0, 22.0)
    assert ngff_translation({"ome": ngff}) == (11.0, 22.0)  # NGFF 0.5 nests under "ome"
    assert ngff_translation({"multiscales": [{"datasets": [{"path": "0"}]}]}) is None
    exported = {"export": {"region": {"x": 300, "y": 100, "w": 700, "h": 512}}}
    assert export_origin(exported) == (100, 300)
    # NGFF wins; else the export record in µm; else the origin
    assert slide_translation(ngff, exported, 0.5) == (11.0, 22.0)
    assert slide_translation({}, exported, 0.5) == (50.0, 150.0)
    assert slide_translation({}, exported, None) == (100.0, 300.0)
    assert slide_translation({}, {}, 0.5) == (0.0, 0.0)


def test_describe_length():
    assert describe_length(16384, 0.998) == "16,384 px (16.4 mm)"
    assert describe_length(512, 0.5) == "512 px (256 µm)"
    assert describe_length(512, None) == "512 px"
    assert describe_length(10_000_000, 1.996) == "10,000,000 px (19,960 mm)"  # was "(2e+04 mm)"
