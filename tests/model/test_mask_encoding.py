import numpy as np
import pytest
import torch

from napari_diffinfinite.errors import CheckpointError, TrainingError
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.mask_encoding import encoding_problem, image_to_labels, labels_to_image
from napari_diffinfinite.training.configs import make_model_config


def test_grey_official_rounding():
    image = np.zeros((3, 4, 4), np.float32)
    image[:, :2] = 1 / 3  # label 1 of 4 levels
    image[:, 2:, :2] = 1.0  # label 3
    image[0, 3, 3] = 0.9  # channels disagree: mean of rounded levels, rounded
    levels = image_to_labels(image, 4, "grey")
    assert levels[0, 0] == 1 and levels[2, 0] == 3 and levels[2, 3] == 0 and levels[3, 3] == 1


@pytest.mark.parametrize("encoding", ["grey", "one-hot"])
def test_round_trip(encoding):
    labels = torch.tensor([[[0, 1, 2, 3], [3, 2, 1, 0]]])
    image = labels_to_image(labels, 4, encoding)
    assert image.shape == (1, 3, 2, 4) and image.min() >= 0 and image.max() <= 1
    assert (image_to_labels(image[0].numpy(), 4, encoding) == labels[0].numpy()).all()


def test_one_hot_channels_and_uncertainty():
    image = labels_to_image(torch.tensor([[[1, 2, 3, 0]]]), 4, "one-hot")[0]
    assert image[:, 0, 0].tolist() == [1, 0, 0] and image[:, 0, 2].tolist() == [0, 0, 1]
    assert image[:, 0, 3].tolist() == [0, 0, 0]
    # halfway between glass (1) and epidermis (3): never read as dermis (2), which grey encoding does
    half = 0.5 * (
        labels_to_image(torch.tensor([[[1]]]), 4, "one-hot") + labels_to_image(torch.tensor([[[3]]]), 4, "one-hot")
    )
    assert image_to_labels(half[0].numpy(), 4, "one-hot")[0, 0] in (1, 3)
    grey_half = 0.5 * (labels_to_image(torch.tensor([[[1]]]), 4) + labels_to_image(torch.tensor([[[3]]]), 4))
    assert image_to_labels(grey_half[0].numpy(), 4)[0, 0] == 2
    dim = np.full((3, 1, 1), 0.3, np.float32)  # no channel reaches 0.5: unknown
    assert image_to_labels(dim, 4, "one-hot")[0, 0] == 0


def test_encoding_problems():
    assert encoding_problem("grey", 10) is None and encoding_problem("one-hot", 4) is None
    assert "at most 3 classes" in encoding_problem("one-hot", 5)
    assert "must be one of" in encoding_problem("rgb", 4)


def test_config_keeps_grey_out_of_json_and_checks_encoding():
    grey = make_model_config("mask")
    assert grey.mask_encoding == "grey" and "mask_encoding" not in grey.to_dict()
    one_hot = make_model_config("mask", mask_encoding="one-hot")
    data = one_hot.to_dict()
    assert data["mask_encoding"] == "one-hot" and ModelConfig.from_dict(data).mask_encoding == "one-hot"
    with pytest.raises(CheckpointError, match="mask_encoding must be one of"):
        ModelConfig.from_dict({**data, "mask_encoding": "rgb"})
    image = make_model_config("image").to_dict()
    with pytest.raises(CheckpointError, match="mask_encoding is for mask models"):
        ModelConfig.from_dict({**image, "mask_encoding": "one-hot"})
    five = make_model_config("mask", class_names="glass,a,b,c")
    with pytest.raises(CheckpointError, match="at most 3 classes"):
        ModelConfig.from_dict({**five.to_dict(), "mask_encoding": "one-hot"})
    with pytest.raises(TrainingError, match="at most 3 classes"):
        make_model_config("mask", class_names="glass,a,b,c", mask_encoding="one-hot")
