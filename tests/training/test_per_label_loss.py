"""``mask_mode="per-label-loss"``: a label's prediction is scored only on that label's pixels."""

from __future__ import annotations

import torch
from torch import nn

from napari_diffinfinite.model.codec import IdentityCodec
from napari_diffinfinite.training.objectives import ImageObjective


class WrongOutsideShownLabel(nn.Module):
    """Predicts 0 (close to the noise, loss ~1) on the shown label's pixels, 100 elsewhere."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return torch.where(masks > 0, 0.0, 100.0).expand_as(x)


def _loss(image_config, mode: str, cond_drop: float) -> float:
    labels = torch.ones(8, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = 2
    batch = {"image": torch.zeros(8, 3, 32, 32), "labels": labels}
    objective = ImageObjective(image_config, IdentityCodec(2), cond_drop_prob=cond_drop, mask_mode=mode)
    loss, _ = objective.loss(WrongOutsideShownLabel(), batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    return float(loss)


def test_per_label_loss_ignores_pixels_of_other_labels(image_config) -> None:
    assert _loss(image_config, "per-label-loss", 0.0) < 2.0
    assert _loss(image_config, "per-label", 0.0) > 1000.0


def test_per_label_loss_scores_the_whole_tile_for_the_unconditional_branch(image_config) -> None:
    assert _loss(image_config, "per-label-loss", 1.0) > 1000.0
