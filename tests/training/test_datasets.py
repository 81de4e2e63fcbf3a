"""Training data: tile folders, slides with GeoJSON, augmentation and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.errors import TrainingError
from napari_diffinfinite.training.augment import NUM_SYMMETRIES, dihedral
from napari_diffinfinite.training.datasets import (
    TileDataset,
    TissueCondition,
    find_tiles,
    grid_origin,
    slide_downsample,
)
from napari_diffinfinite.training.runner import build_dataset, build_sources

from .conftest import COLOURS, write_tiles


def test_tiles_without_masks_are_unlabelled(tiles: Path, image_config) -> None:
    pairs = find_tiles(tiles)
    assert [m is not None for _, m in pairs] == [True, True, True, False, False, False]
    sources = build_sources(image_config, tiles=[tiles])
    assert all(int(s.labels.max()) == 0 for s in sources[3:])
    # labels are kept at latent resolution (pixel unshuffle 2 -> 16 x 16)
    assert sources[0].labels.shape == (16, 16) and set(np.unique(sources[0].labels)) == {1, 2}
    summary = build_dataset(image_config, sources).summary()
    assert summary.candidates == 6 and summary.labelled_candidates == 3


def test_items_are_keyed_and_flips_keep_labels_on_their_pixels(tiles: Path, image_config) -> None:
    dataset = build_dataset(image_config, build_sources(image_config, tiles=[tiles]))
    seen = set()
    for i in range(24):
        key = (0, 5, 0, i)
        item = dataset[key]
        again = dataset[key]
        assert all(np.array_equal(item[k].numpy(), again[k].numpy()) for k in item)
        labels = item["labels"].numpy()
        if labels.max() == 0:
            continue
        image = (item["image"].numpy().transpose(1, 2, 0) * 255).round()
        # each 2 x 2 block's colour must match its label after the same flip/rotation
        blocks = image.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
        expected = np.array([COLOURS[int(v)] for v in labels.ravel()]).reshape(16, 16, 3)
        assert np.abs(blocks - expected).max() < 40
        seen.add(labels.tobytes())
    assert len(seen) > 1


def test_dihedral_covers_the_eight_symmetries() -> None:
    a = np.arange(9).reshape(3, 3)
    results = {dihedral(a, k).tobytes() for k in range(NUM_SYMMETRIES)}
    assert len(results) == 8 and np.array_equal(dihedral(a, 0), a)


def test_mask_of_another_size_is_refused(tiles: Path, image_config) -> None:
    Image.fromarray(np.ones((16, 32), np.uint8)).save(tiles / "masks" / "tile4.png")
    with pytest.raises(TrainingError, match=r"32x16 px but its tile .*tile4.png is 32x32 px"):
        build_sources(image_config, tiles=[tiles])


def test_label_above_the_model_classes_is_refused(tiles: Path, image_config) -> None:
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(tiles / "masks" / "tile4.png")
    with pytest.raises(TrainingError, match=r"labels the model does not have: 7 \(1024 px\).*0 = unknown, 1 = pink"):
        build_sources(image_config, tiles=[tiles])


def test_empty_folder_and_orphan_masks_are_refused(tmp_path: Path, image_config) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no tiles found in"):
        build_sources(image_config, tiles=[tmp_path / "empty"])
    with pytest.raises(TrainingError, match="does not exist"):
        build_sources(image_config, tiles=[tmp_path / "missing"])
    folder = write_tiles(tmp_path / "t", n=2, labelled=1)
    Image.fromarray(np.ones((32, 32), np.uint8)).save(folder / "masks" / "typo.png")
    with pytest.raises(TrainingError, match="masks without a tile.*typo"):
        build_sources(image_config, tiles=[folder])


def test_tiles_smaller_than_a_patch_are_refused(tmp_path: Path, image_config) -> None:
    folder = write_tiles(tmp_path / "small", n=2, labelled=0, size=16)
    with pytest.raises(TrainingError, match="smaller than one training tile of 32 px"):
        build_dataset(image_config, build_sources(image_config, tiles=[folder]))


def test_unreadable_slide_is_refused(tmp_path: Path, image_config) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(TrainingError, match=r"cannot read slide .*broken.svs"):
        build_sources(image_config, slides=[bad])
    with pytest.raises(TrainingError, match="cannot read slide"):
        build_sources(image_config, slides=[tmp_path / "missing.svs"])


def _write_slide(path: Path, image: np.ndarray | None = None) -> Path:
    """A 512 x 512 generic tiled TIFF at 0.5 um/px of ``image``, by default textured tissue on
    the left and glass on the right."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("openslide")
    if image is None:
        rng = np.random.default_rng(0)
        image = np.full((512, 512, 3), 245, np.uint8)
        image[:, :256] = np.clip(np.array([200, 110, 160]) + rng.integers(-30, 30, (512, 256, 3)), 0, 255)
    tifffile.imwrite(
        path, image, tile=(128, 128), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    return path


def test_slide_with_sparse_geojson(tmp_path: Path, image_config, mask_config) -> None:
    slide = _write_slide(tmp_path / "slide.tif")
    square = [[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]  # level-0 px: top-left quarter
    geojson = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
        "properties": {"objectType": "annotation", "classification": {"name": "Pink", "color": [255, 0, 0]}}}]}  # fmt: skip
    (tmp_path / "slide.geojson").write_text(json.dumps(geojson))  # found next to the slide
    assert slide_downsample(slide, 1.0) == 2.0
    (source,) = build_sources(image_config, slides=[slide], pixel_size_um=1.0)
    # the 2x grid starts 1 level-0 px in (grid_origin): 255 training px fit, on 127 label px
    assert source.origin == 1.0 and source.shape == (255, 255) and source.labels.shape == (127, 127)
    assert source.pixel_size_um == 1.0
    assert (source.labels[:64, :64] == 1).all() and source.labels[64:].max() == 0 and source.labels[:, 64:].max() == 0
    assert source.tissue[:, :60].all() and not source.tissue[:, 70:].any()
    dataset = build_dataset(image_config, [source], min_tissue=0.5)
    # only windows on the tissue (left half) are kept; some are labelled, some not
    assert (dataset.candidates[:, 2] <= 64 - 8).all()  # at least half of each window on tissue
    assert 0 < dataset.candidates[:, 3].sum() < len(dataset)
    item = dataset[(0, 0, 0, 0)]
    assert item["image"].shape == (3, 32, 32) and item["labels"].shape == (16, 16)
    # the mask model reads the labels at its own scale and never the pixels
    (mask_source,) = build_sources(mask_config, slides=[slide], downsample=2)
    masks = build_dataset(mask_config, [mask_source], min_labelled=0.5, condition=TissueCondition(background=1))
    assert "image" not in masks[(0, 0, 0, 0)] and masks[(0, 0, 0, 0)]["labels"].shape == (16, 16)


def test_grid_origin_puts_jpeg_block_borders_inside_boxes() -> None:
    assert [grid_origin(r) for r in (1.0, 1.5, 2.0, 2.5, 4.0, 8.0)] == [0, 0, 1, 1, 2, 4]


def test_slide_read_at_4x_has_no_period_2_pattern_from_8px_blocks(tmp_path: Path, image_config) -> None:
    """Level-0 columns in 8-px blocks of alternating tone (a JPEG block grid, exaggerated):
    boxes of 4 from x = 0 would give gradients 0, 40, 0, 40, ...; from grid_origin, 20 each."""
    columns = np.where((np.arange(512) // 8) % 2 == 0, 100, 140).astype(np.uint8)
    image = np.repeat(np.broadcast_to(columns[None, :, None], (512, 512, 1)), 3, axis=2)
    slide = _write_slide(tmp_path / "blocks.tif", image)
    (source,) = build_sources(image_config, slides=[slide], downsample=4)
    row = source.read_image(0, 0, 64)[0, :, 0].astype(int)
    gradients = np.abs(np.diff(row))
    assert gradients.min() == gradients.max() == 20, row[:8]


def test_geojson_with_unknown_class_is_refused(tmp_path: Path, image_config) -> None:
    slide = _write_slide(tmp_path / "slide.tif")
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
               "properties": {"classification": {"name": "Tumour"}}}  # fmt: skip
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(TrainingError, match="Tumour"):
        build_sources(image_config, slides=[slide], annotations=[tmp_path / "a.geojson"])
    (source,) = build_sources(
        image_config, slides=[slide], annotations=[tmp_path / "a.geojson"], skip_unknown_classes=True
    )
    assert source.labels.max() == 0


def test_no_candidate_tile_explains_thresholds(tiles: Path, mask_config) -> None:
    sources = build_sources(mask_config, tiles=[tiles])
    for s in sources:
        s.labels[:] = 0
    with pytest.raises(TrainingError, match="labelled pixels"):
        TileDataset(sources, tile_size=32, with_images=False, min_labelled=0.5)
