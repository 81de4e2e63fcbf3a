"""The training objectives' targets: noise or v, for mask models as for image models."""

from __future__ import annotations

import pytest
import torch

from napari_diffinfinite.model.codec import IdentityCodec
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.testing import tiny_mask_config
from napari_diffinfinite.training.objectives import MaskObjective


class _Oracle(torch.nn.Module):
    """Returns the exact noise or v of x_t, knowing x0."""

    def __init__(self, x0: torch.Tensor, alphas: torch.Tensor, objective: str) -> None:
        super().__init__()
        self.x0, self.alphas, self.objective = x0, alphas, objective

    def forward(self, x, t, classes, null):
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0 if self.objective == "pred_v" else eps


@pytest.mark.parametrize("objective", ["pred_noise", "pred_v"])
def test_mask_objective_regresses_its_target(objective):
    config = ModelConfig.from_dict({**tiny_mask_config().to_dict(), "objective": objective})
    codec = IdentityCodec(config.pixel_unshuffle)
    objective_ = MaskObjective(config, codec, cond_drop_prob=0.0)
    labels = torch.zeros(4, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = 2
    labels[1, :4] = 1
    batch = {"labels": labels, "condition": torch.tensor([0, 1, 1, 0])}
    x0 = codec.encode(objective_.mask_images(labels))
    alphas = objective_.schedule.alphas_cumprod
    right = _Oracle(x0, alphas, objective)
    loss, counts = objective_.loss(right, batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(loss) < 1e-6 and counts.conditional == 4
    other = "pred_noise" if objective == "pred_v" else "pred_v"
    wrong, _ = objective_.loss(_Oracle(x0, alphas, other), batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(wrong) > 0.01


def test_mask_objective_writes_labels_in_the_models_encoding():
    labels = torch.tensor([[[0, 1, 2]]])
    grey = MaskObjective(tiny_mask_config(), IdentityCodec(1)).mask_images(labels)
    assert grey[0, :, 0, 2].tolist() == [1.0, 1.0, 1.0]  # label 2 of 3: white in every channel
    config = ModelConfig.from_dict({**tiny_mask_config().to_dict(), "mask_encoding": "one-hot"})
    one_hot = MaskObjective(config, IdentityCodec(1)).mask_images(labels)
    assert one_hot[0, :, 0].T.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
