"""Known-answer tests of the seam score."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.seams import (
    luminance,
    near_label_edges,
    seam_score,
    seam_score_of_regions,
    seam_scores,
)


def texture(shape=(512, 640), seed=0) -> np.ndarray:
    """A seamless RGB texture: smooth colour waves plus pixel noise, no structure at any fixed phase."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 150 + 40 * np.sin(xx / 37.0 + yy / 53.0)[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def test_seamless_texture_scores_about_one():
    result = seam_score(texture(), period=128)
    assert result.x.score < 1.1 and result.y.score < 1.1
    assert result.score == max(result.x.score, result.y.score)


def test_one_pixel_line_at_fixed_phase_scores_well_above_one():
    image = texture()
    image[:, 128 * np.arange(1, 5) + 37] = 20  # dark 1-px vertical lines at phase 37
    result = seam_score(image, period=128)
    assert result.x.score > 3
    assert result.x.phase in (37, 38)  # the step into the line or out of it
    assert result.y.score < 1.1  # vertical lines leave the row profile flat


def test_patch_border_step_lands_on_phase_zero():
    image = texture().astype(np.float32)
    image[128:256] += 10  # alternate bands of patches a little brighter: steps into rows 128, 256, 384
    image[384:] += 10
    result = seam_score(np.clip(image, 0, 255).astype(np.uint8), period=128)
    assert result.y.phase == 0 and result.y.score > 1.2


def test_period_of_decode_tile_is_scored_separately():
    image = texture((1024, 1024))
    image[:, 256::256] = 0
    scores = seam_scores(image, periods=(128, 256, 128))
    assert sorted(scores) == [128, 256]
    assert scores[256].x.score > 3 and scores[256].x.phase in (0, 1)
    assert scores[128].x.phase in (0, 1)  # a 256-periodic seam is 128-periodic too


def test_tiled_scoring_equals_whole_image():
    image = texture((700, 900), seed=3)
    whole = seam_scores(image, periods=(128, 200))
    tiled = seam_score_of_regions(lambda y0, y1, x0, x1: image[y0:y1, x0:x1], image.shape[:2], (128, 200), tile=256)
    for period in whole:
        np.testing.assert_allclose(tiled[period].x.profile, whole[period].x.profile, rtol=1e-6)
        np.testing.assert_allclose(tiled[period].y.profile, whole[period].y.profile, rtol=1e-6)


def test_float_luminance_and_flat_image():
    flat = np.full((256, 256), 0.5, np.float32)
    assert seam_score(flat).score == 1.0
    rgb = texture((256, 256))
    np.testing.assert_allclose(luminance(rgb)[0, 0], rgb[0, 0] @ [0.299, 0.587, 0.114] / 255, rtol=1e-5)


@pytest.mark.parametrize(
    ("image", "match"),
    [(np.zeros((256, 256, 4), np.uint8), "RGB"), (np.zeros((200, 400, 3), np.uint8), "two periods")],
)
def test_unusable_images_are_refused_with_a_clear_message(image, match):
    with pytest.raises(DiffInfiniteError, match=match):
        seam_score(image, period=128)


def test_json_ready():
    d = seam_score(texture()).to_dict()
    assert set(d) == {"period", "score", "x", "y"} and isinstance(d["x"]["phase"], int)


def test_class_borders_a_layout_asks_for_are_left_out_with_exclude():
    """A band layout whose class borders lie on multiples of the period: the borders score as a
    seam unless the pixels near them are excluded (a patch seam inside a class still counts)."""
    from napari_diffinfinite.evaluation.seams import near_label_edges

    image = texture((512, 640)).astype(np.float32)
    labels = np.zeros((512, 640), np.uint8)
    labels[:, 256:384] = 1
    image[:, 256:384] -= 60  # a darker band of the other class, drawn where the layout asks for it
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    exclude = near_label_edges(labels, distance=4)
    assert exclude[:, 252:260].all() and not exclude[:, :250].any() and not exclude[:, 262:378].any()
    assert seam_score(rgb, period=128).x.score > 2  # the band's edges, at phase 0
    assert seam_score(rgb, period=128, exclude=exclude).x.score < 1.1
    seamed = rgb.copy()
    seamed[:, 128 * np.arange(1, 5) + 37] = 20  # a real seam at phase 37, away from the class borders
    result = seam_score(seamed, period=128, exclude=exclude)
    assert result.x.score > 3 and result.x.phase in (37, 38)
    with pytest.raises(DiffInfiniteError, match="exclusion mask"):
        seam_score(rgb, period=128, exclude=exclude[:10])


def test_regions_with_labels_equal_the_whole_image_with_labels():
    """Class borders left out and each class divided by its own mean gradient, tile by tile, as
    for the whole image (the per-class sums are kept apart until the result is taken)."""
    image = texture((600, 520), seed=3)
    image[350:, 200:] //= 4  # a class of weaker texture: per-class normalisation matters
    labels = np.zeros((600, 520), np.uint8)
    labels[100:300, 50:400] = 1
    labels[350:, 200:] = 2
    whole = seam_scores(image, periods=(128, 100), labels=labels, edge_distance=5)
    tiled = seam_score_of_regions(
        lambda y0, y1, x0, x1: image[y0:y1, x0:x1], image.shape[:2], (128, 100), tile=96,
        read_labels=lambda y0, y1, x0, x1: labels[y0:y1, x0:x1], edge_distance=5,
    )  # fmt: skip
    for period in (128, 100):
        np.testing.assert_allclose(tiled[period].x.profile, whole[period].x.profile, rtol=1e-6)
        np.testing.assert_allclose(tiled[period].y.profile, whole[period].y.profile, rtol=1e-6)
    from napari_diffinfinite.evaluation.seams import near_label_edges

    unnormalised = seam_scores(image, periods=(128,), exclude=near_label_edges(labels, 5))[128]
    assert not np.allclose(unnormalised.x.profile, whole[128].x.profile)


def test_with_labels_classes_of_different_texture_weigh_the_same_at_every_phase():
    """The band layout: tissue, glass (flat), tissue in bands one period high. Leaving out the rows
    near the class borders leaves the phases next to 0 with tissue only, while the others average
    tissue with glass: raw gradients peak there; per-class normalisation (``labels``) keeps the fold
    flat and still finds a real seam."""
    image = texture((384, 640), seed=1).astype(np.float32)
    labels = np.zeros((384, 640), np.uint8)
    labels[128:256] = 1
    image[128:256] = 245  # flat glass
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    assert seam_score(rgb, period=128, exclude=near_label_edges(labels, 8)).y.score > 1.3
    assert seam_score(rgb, period=128, labels=labels).y.score < 1.1
    seamed = rgb.copy()
    seamed[:, 128 * np.arange(0, 5) + 37] = 20  # a seam at phase 37 of x
    result = seam_score(seamed, period=128, labels=labels)
    assert result.x.score > 3 and result.x.phase in (37, 38)
