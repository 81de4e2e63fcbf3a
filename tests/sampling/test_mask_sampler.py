import numpy as np

from napari_diffinfinite.sampling.mask_sampler import clean_mask, layout_shape, quantize_mask, sample_layout


def test_quantize_mask_official_rounding():
    image = np.zeros((3, 4, 4), np.float32)
    image[:, :2] = 1 / 3  # label 1 of 4 levels
    image[:, 2:, :2] = 1.0  # label 3
    image[0, 3, 3] = 0.9  # channels disagree: mean of rounded levels, rounded
    levels = quantize_mask(image, 4)
    assert levels[0, 0] == 1 and levels[2, 0] == 3 and levels[2, 3] == 0 and levels[3, 3] == 1


def test_clean_mask_removes_boundaries_and_slivers():
    levels = np.zeros((40, 40), np.uint8)
    levels[:, :20] = 1
    levels[:, 20:] = 2
    levels[5:7, 5:30] = 3  # a 2-px sliver
    cleaned = clean_mask(levels)
    assert (cleaned[:, 17:23] == 0).all()  # boundary between 1 and 2 became unknown, widened by the filter
    assert not (cleaned == 3).any()
    assert (cleaned[20, :10] == 1).all() and (cleaned[20, 30:] == 2).all()


def test_sample_layout_shape_and_labels(tiny_mask_model, mask_codec):
    canvas = sample_layout(tiny_mask_model, mask_codec, (300, 200), seed=1, steps=2)
    assert canvas.shape == layout_shape((300, 200), 4) == (75, 50)
    assert canvas.dtype == np.uint8 and canvas.max() < 3
