import numpy as np
import pytest
import torch

from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import DiffusionModel
from napari_diffinfinite.sampling.mask_sampler import clean_mask, layout_shape, sample_layout
from napari_diffinfinite.sampling.schedule import Schedule


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


class _OracleV(torch.nn.Module):
    """A mask network that knows the answer: the v (or the noise) of a constant x0 latent."""

    def __init__(self, x0: float, objective: str) -> None:
        super().__init__()
        self.x0, self.objective = x0, objective
        self.alphas = Schedule(1).alphas_cumprod

    def forward(self, x, t, classes, null):
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt().clamp_min(1e-8)
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0 if self.objective == "pred_v" else eps


@pytest.mark.parametrize("objective", ["pred_v", "pred_noise"])
def test_a_v_predicting_mask_model_samples_its_layout(tiny_mask_model, mask_codec, objective):
    """The mask sampler reads the network's output as v when the model says so: an oracle
    for the top label (grey 1, latent +1, the level eps-prediction finds hardest to reach)
    gives that label everywhere."""
    config = ModelConfig.from_dict({**tiny_mask_model.config.to_dict(), "objective": objective})
    model = DiffusionModel(config=config, unet=_OracleV(1.0, objective), sha256="", source="oracle")
    # one step, from t = 999 straight to x0: where v = -x0 and a misread would be far off
    canvas = sample_layout(model, mask_codec, (128, 128), seed=0, steps=1)
    assert (canvas == 2).all()
    wrong = DiffusionModel(config=tiny_mask_model.config, unet=_OracleV(1.0, "pred_v"), sha256="", source="oracle")
    assert (sample_layout(wrong, mask_codec, (128, 128), seed=0, steps=1) != 2).mean() > 0.05  # v read as noise


@pytest.mark.parametrize("label", [1, 2])
def test_a_one_hot_mask_model_samples_its_layout(tiny_mask_model, mask_codec, label):
    """The sampler reads a one-hot model's image by its channels: an oracle for one label's
    colour gives that label everywhere."""
    from napari_diffinfinite.model.mask_encoding import labels_to_image

    config = ModelConfig.from_dict(
        {**tiny_mask_model.config.to_dict(), "objective": "pred_v", "mask_encoding": "one-hot"}
    )
    x0 = mask_codec.encode(labels_to_image(torch.full((1, 2, 2), label), 3, "one-hot"))[:, :, :1, :1]
    model = DiffusionModel(config=config, unet=_OracleV(x0, "pred_v"), sha256="", source="oracle")
    assert (sample_layout(model, mask_codec, (128, 128), seed=0, steps=1) == label).all()
    if label == 2:  # dermis's channel alone, read as grey levels, is a third of white: label 1
        grey_config = ModelConfig.from_dict({**config.to_dict(), "mask_encoding": "grey"})
        grey = DiffusionModel(config=grey_config, unet=_OracleV(x0, "pred_v"), sha256="", source="oracle")
        assert (sample_layout(grey, mask_codec, (128, 128), seed=0, steps=1) == 1).all()


def test_upsampled_labels_in_strips_match_one_interpolation(monkeypatch):
    """Strips of rows join exactly: the labels equal one bilinear upsampling of the whole image."""
    from napari_diffinfinite.model.mask_encoding import image_to_labels
    from napari_diffinfinite.sampling import mask_sampler

    rng = np.random.default_rng(0)
    image = rng.random((3, 23, 17)).astype(np.float32)
    whole = torch.nn.functional.interpolate(torch.from_numpy(image)[None], scale_factor=4, mode="bilinear")[0]
    expected = image_to_labels(whole.numpy(), 4, "one-hot")
    monkeypatch.setattr(mask_sampler, "UPSAMPLE_STRIP_ROWS", 5)
    assert np.array_equal(mask_sampler.upsampled_labels(image, 4, 4, "one-hot"), expected)
    assert np.array_equal(mask_sampler.upsampled_labels(image, 1, 4, "one-hot"), image_to_labels(image, 4, "one-hot"))


def test_an_upsampling_mask_model_gives_a_finer_canvas(tiny_mask_model, mask_codec):
    """With layout_upsample 2 the canvas is at 2/mask_downsample of the slide."""
    from napari_diffinfinite.model.mask_encoding import labels_to_image

    base = {**tiny_mask_model.config.to_dict(), "objective": "pred_v", "mask_encoding": "one-hot"}
    config = ModelConfig.from_dict({**base, "layout_upsample": 2})
    assert config.to_dict()["layout_upsample"] == 2 and "layout_upsample" not in ModelConfig.from_dict(base).to_dict()
    x0 = mask_codec.encode(labels_to_image(torch.full((1, 2, 2), 2), 3, "one-hot"))[:, :, :1, :1]
    model = DiffusionModel(config=config, unet=_OracleV(x0, "pred_v"), sha256="", source="oracle")
    canvas = sample_layout(model, mask_codec, (130, 128), seed=0, steps=1)
    assert canvas.shape == layout_shape((130, 128), 2) == (65, 64)
    assert (canvas == 2).all()


def test_upsampling_draws_a_border_between_coarse_pixels_smoothly():
    """A diagonal border drawn in coarse pixels (a staircase) becomes a finer staircase, and the
    clean-up's band (a fixed width in canvas pixels) covers about 4 x less of the slide."""
    from napari_diffinfinite.model.mask_encoding import labels_to_image
    from napari_diffinfinite.sampling.mask_sampler import upsampled_labels

    coarse = torch.where(torch.arange(32)[:, None] > torch.arange(32)[None, :], 1, 2)[None]
    image = labels_to_image(coarse, 3, "one-hot")[0].numpy()
    nearest = np.kron(upsampled_labels(image, 1, 3, "one-hot"), np.ones((4, 4), np.uint8))
    fine = upsampled_labels(image, 4, 3, "one-hot")
    assert fine.shape == (128, 128) and set(np.unique(fine)) == {1, 2}
    steps = lambda labels: int(np.abs(np.diff((labels == 1).argmin(axis=1))).max())  # noqa: E731
    assert steps(nearest) == 4 and steps(fine) < 4
    assert (clean_mask(fine) == 0).mean() < 0.35 * (clean_mask(upsampled_labels(image, 1, 3, "one-hot")) == 0).mean()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"layout_upsample": 3}, "must divide mask_downsample"),
        ({"layout_upsample": 2, "mask_encoding": "grey"}, "needs mask_encoding 'one-hot'"),
        ({"layout_upsample": 0}, "layout_upsample"),
    ],
)
def test_layout_upsample_is_checked(tiny_mask_model, changes, problem):
    from napari_diffinfinite.errors import CheckpointError

    base = {**tiny_mask_model.config.to_dict(), "mask_encoding": "one-hot"}
    with pytest.raises(CheckpointError, match=problem):
        ModelConfig.from_dict({**base, **changes})
