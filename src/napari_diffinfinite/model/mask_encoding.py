"""How a mask (layout) model writes labels as an RGB image, and how its samples are read back.

A mask model is a diffusion model over images, so a label map must become an image to train
on and a sampled image must become labels again. Two encodings (``ModelConfig.mask_encoding``):

* ``"grey"`` (DiffInfinite's, the default): label ``k`` of ``n`` is the grey ``k / (n - 1)``
  in all three channels; a sample is rounded to ``n`` levels per channel and the channels
  are averaged and rounded again (the official code's rounding). The labels are ordered on
  one axis, so a network that is unsure between two classes outputs a grey between them,
  which rounds to the class in the middle (between glass and epidermis: dermis) or to a
  speckle of boundaries.
* ``"one-hot"``: label ``k >= 1`` lights channel ``k - 1`` (so at most three classes besides
  "unknown", which is black); a sample is read as the brightest channel where it reaches 0.5,
  else unknown. Every pair of classes is equally far apart, so uncertainty between two
  classes never reads as a third.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made: the model config (and with it the
    import torch  # napari reader, which reads a store's provenance) must not load torch (4 s)

MASK_ENCODINGS = ("grey", "one-hot")
ONE_HOT_MAX_LABELS = 4  # "unknown" + one class per RGB channel


def encoding_problem(encoding: object, num_labels: int) -> str | None:
    """Why ``encoding`` cannot hold ``num_labels`` labels, or None."""
    if encoding not in MASK_ENCODINGS:
        return f"mask_encoding must be one of {', '.join(map(repr, MASK_ENCODINGS))}, not {encoding!r:.40}"
    if encoding == "one-hot" and num_labels > ONE_HOT_MAX_LABELS:
        return (
            f"mask_encoding 'one-hot' holds at most {ONE_HOT_MAX_LABELS - 1} classes besides 'unknown' (one per RGB "
            f"channel); this model has {num_labels} labels: use 'grey'"
        )
    return None


def labels_to_image(labels: torch.Tensor, num_labels: int, encoding: str = "grey") -> torch.Tensor:
    """(B, h, w) integer labels -> (B, 3, h, w) float image in [0, 1] (what the model learns)."""
    if encoding == "grey":
        grey = labels.float() / max(1, num_labels - 1)
        return grey[:, None].expand(-1, 3, -1, -1).contiguous()
    if encoding == "one-hot":
        import torch

        channels = torch.arange(1, ONE_HOT_MAX_LABELS, device=labels.device).view(1, 3, 1, 1)
        return (labels[:, None].long() == channels).float()
    raise ValueError(encoding_problem(encoding, num_labels))


def image_to_labels(image: np.ndarray, num_labels: int, encoding: str = "grey") -> np.ndarray:
    """(3, h, w) sampled image in [0, 1] -> (h, w) uint8 labels ``0 .. num_labels - 1``."""
    if encoding == "grey":  # the official rounding: per channel, then of the channel mean
        levels = np.rint((num_labels - 1) * image)
        return np.rint(levels.mean(axis=0)).astype(np.uint8)
    if encoding == "one-hot":
        classes = image[: num_labels - 1]
        labels = classes.argmax(axis=0).astype(np.uint8) + 1
        labels[classes.max(axis=0) < 0.5] = 0
        return labels
    raise ValueError(encoding_problem(encoding, num_labels))
