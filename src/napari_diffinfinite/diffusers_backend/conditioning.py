"""The ControlNet's conditioning image: the label layout under a patch, rendered as it was trained.

Two renderings, chosen per ControlNet (its ``diffinfinite.json``, else its input channels):

* ``"colors"``: every label painted in its class colour, RGB in [0, 1] (what diffusers'
  ``train_controlnet.py`` feeds a ControlNet trained on colour-coded masks; the control image
  processor does not normalise to [-1, 1]);
* ``"onehot"``: one channel per class, 1 where the pixel has that label (a ControlNet built
  with ``conditioning_channels`` = number of classes).

The sampler hands the denoiser labels at latent resolution; the conditioning image is that
patch upsampled (nearest) by the VAE factor to the pixel size the ControlNet expects, so a
patch of P latent pixels is conditioned on the P x P labels under it, each covering 8 x 8 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MODES = ("colors", "onehot")


class LayoutConditioning:
    """Renders (B, p, p) uint8 label patches as (B, channels, p * scale, p * scale) images."""

    def __init__(self, mode: str, class_colors: Sequence[Sequence[int]], scale: int) -> None:
        if mode not in MODES:
            raise ValueError(f"conditioning must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode, self.scale = mode, int(scale)
        self.num_classes = len(class_colors)
        self.colors = torch.tensor([list(c) for c in class_colors], dtype=torch.float32) / 255.0

    @property
    def channels(self) -> int:
        return 3 if self.mode == "colors" else self.num_classes

    def render(self, labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The conditioning images of ``labels`` (B, p, p), at ``scale`` times their resolution."""
        index = labels.long().clamp_(max=self.num_classes - 1)
        if self.mode == "colors":
            image = self.colors.to(labels.device)[index]  # (B, p, p, 3)
        else:
            image = torch.nn.functional.one_hot(index, self.num_classes).float()
        image = image.permute(0, 3, 1, 2)
        if self.scale > 1:
            image = image.repeat_interleave(self.scale, dim=2).repeat_interleave(self.scale, dim=3)
        return image.to(dtype).contiguous()
