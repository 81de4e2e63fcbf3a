"""Layout adherence: known answers on label maps, and the H&E heuristic on the real CMU slide."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.adherence import (
    ClassMapping,
    HESegmenter,
    layout_adherence,
    load_segmenter,
    named_mapping,
    parse_class_map,
    tissue_mapping,
)

DEMO_CLASSES = ["unknown", "background", "dermis", "epidermis"]


def test_identical_maps_score_one_and_disjoint_zero():
    mapping = ClassMapping(names=("a", "b"), layout={0: 0, 1: 1}, segmentation={0: 0, 1: 1})
    layout = np.zeros((10, 10), np.uint8)
    layout[:, 5:] = 1
    same = layout_adherence(layout, layout, mapping)
    assert same.dice == (1.0, 1.0) and same.mean_iou == 1.0
    swapped = layout_adherence(layout, 1 - layout, mapping)
    assert swapped.dice == (0.0, 0.0) and swapped.mean_iou == 0.0


def test_dice_and_iou_match_hand_counts():
    mapping = ClassMapping(names=("a", "b"), layout={1: 0, 2: 1}, segmentation={0: 0, 1: 1})
    layout = np.array([[1, 1, 2, 2, 0]])  # label 0 is not mapped: ignored
    seg = np.array([[0, 1, 1, 1, 0]])
    result = layout_adherence(layout, seg, mapping)
    # class a: truth {0,1}, pred {0}: dice 2*1/3, iou 1/2; class b: truth {2,3}, pred {1,2,3}: dice 4/5, iou 2/3
    np.testing.assert_allclose(result.dice, (2 / 3, 4 / 5))
    np.testing.assert_allclose(result.iou, (1 / 2, 2 / 3))
    assert result.scored_pixels == 4 and result.confusion.tolist() == [[1, 1], [0, 2]]


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    mapping = ClassMapping(names=("a", "b", "c"), layout={0: 0, 1: 1}, segmentation={0: 0, 1: 1})
    layout = np.array([[0, 1]])
    result = layout_adherence(layout, layout, mapping)
    assert math.isnan(result.dice[2]) and result.mean_iou == 1.0
    assert result.to_dict()["dice"]["c"] is None


def test_mappings_from_class_names():
    tissue = tissue_mapping(DEMO_CLASSES)
    assert tissue.layout == {1: 0, 2: 1, 3: 1} and tissue.names == ("glass", "tissue")
    named = named_mapping(DEMO_CLASSES, parse_class_map("background=glass, dermis=stroma,Epidermis=nuclei"))
    assert named.layout == {1: 0, 2: 1, 3: 2}
    with pytest.raises(DiffInfiniteError, match="model's classes"):
        named_mapping(DEMO_CLASSES, {"tumour": "nuclei"})
    with pytest.raises(DiffInfiniteError, match="segmenter's classes"):
        named_mapping(DEMO_CLASSES, {"dermis": "fat"})
    with pytest.raises(DiffInfiniteError, match="MODEL_CLASS=SEGMENTER_CLASS"):
        parse_class_map("dermis")


def test_unmapped_segmenter_label_and_shape_mismatch_are_refused():
    mapping = ClassMapping(names=("a",), layout={0: 0}, segmentation={0: 0})
    with pytest.raises(DiffInfiniteError, match="does not map"):
        layout_adherence(np.zeros((2, 2), int), np.full((2, 2), 7), mapping)
    with pytest.raises(DiffInfiniteError, match="same shape"):
        layout_adherence(np.zeros((2, 2), int), np.zeros((2, 3), int), mapping)


def test_heuristic_on_synthetic_colours():
    rgb = np.zeros((60, 90, 3), np.uint8)
    rgb[:, :30] = (245, 245, 245)  # glass
    rgb[:, 30:60] = (235, 130, 180)  # eosin pink: stroma-like
    rgb[:, 60:] = (90, 50, 140)  # haematoxylin purple: nuclei-dense
    labels = HESegmenter()(rgb)
    assert (labels[:, 2:28] == 0).all() and (labels[:, 35:55] == 1).all() and (labels[:, 65:] == 2).all()


def test_heuristic_glass_is_a_region_not_a_pale_spot():
    """A pale spot inside tissue (a lumen, a tear) is tissue; glass is a piece of >= glass_min_area px."""
    rgb = np.full((80, 120, 3), (235, 130, 180), np.uint8)  # stroma-like tissue
    rgb[:, :40] = (245, 245, 245)  # a glass margin (3200 px)
    rgb[30:50, 70:90] = (245, 245, 245)  # a 400 px pale spot inside the tissue
    labels = HESegmenter()(rgb)
    assert (labels[:, :38] == 0).all()
    assert (labels[30:50, 70:90] == 1).all()
    pixelwise = HESegmenter(glass_min_area=1)(rgb)
    assert (pixelwise[30:50, 70:90] == 0).all()


def test_load_segmenter():
    assert isinstance(load_segmenter("he"), HESegmenter)
    fn = load_segmenter("numpy:zeros_like")
    assert fn(np.ones((2, 2))).sum() == 0
    with pytest.raises(DiffInfiniteError, match="cannot import"):
        load_segmenter("no_such_module_xyz:f")


@pytest.fixture(scope="module")
def cmu_quarter(cmu_svs) -> np.ndarray:
    """The CMU slide at a 4x downsample (about 2 um/px, the heuristic's scale)."""
    from napari_diffinfinite.slide.openslide_reader import open_real_slide

    with open_real_slide(cmu_svs) as slide:
        h, w = slide.shape
        rgb = slide.read_region(0, 0, h, 0, w)
    return np.asarray(Image.fromarray(rgb).resize((w // 4, h // 4), Image.Resampling.BOX))


def test_cmu_slide_adheres_to_its_own_tissue_layout_not_to_a_shuffled_one(cmu_quarter):
    """The project's tissue detector (optical density, triangle threshold) gives the layout;
    the heuristic (saturation/value) segments: two independent rules must agree on the real slide."""
    from napari_diffinfinite.slide.tissue import tissue_mask_from_rgb

    mask, _ = tissue_mask_from_rgb(cmu_quarter)
    layout = np.where(mask, 2, 1).astype(np.uint8)  # demo classes: 1 background, 2 dermis (tissue)
    mapping = tissue_mapping(DEMO_CLASSES)
    seg = HESegmenter()(cmu_quarter)
    own = layout_adherence(layout, seg, mapping)
    # 0.94: glass judged as pieces of >= 500 px; pixel by pixel (the rule before) 0.89
    assert own.mean_iou > 0.92 and own.dice[1] > 0.94

    # Shuffle the layout in 64-px blocks: same class proportions, wrong places.
    rng = np.random.default_rng(0)
    b = 64
    hb, wb = layout.shape[0] // b, layout.shape[1] // b
    blocks = layout[: hb * b, : wb * b].reshape(hb, b, wb, b).swapaxes(1, 2).reshape(hb * wb, b, b)
    shuffled = blocks[rng.permutation(len(blocks))].reshape(hb, wb, b, b).swapaxes(1, 2).reshape(hb * b, wb * b)
    other = layout_adherence(shuffled, seg[: hb * b, : wb * b], mapping)
    assert other.dice[1] < 0.6 and other.mean_iou < own.mean_iou - 0.3


def test_cmu_epidermis_is_nuclei_dense(cmu_quarter):
    """The slide is skin: the heuristic finds both classes in plausible proportions (epidermis is the minority)."""
    seg = HESegmenter()(cmu_quarter)
    tissue = (seg > 0).sum()
    assert 0.1 < (seg == 2).sum() / tissue < 0.6
