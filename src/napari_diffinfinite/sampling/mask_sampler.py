"""Tissue layouts from DiffInfinite's mask model.

As in the official code, the layout is sampled at a fraction (``mask_downsample``; upstream 1/4)
of the slide size with the same random-patch scheme as images, decoded to an image
(upsampled ``layout_upsample`` times where the model's config asks for it), read
as labels (:mod:`~napari_diffinfinite.model.mask_encoding`: the official grey levels, or
one channel per class) and cleaned: class boundaries are set to "unknown" (0)
and a 6 x 6 minimum filter removes slivers. The result is a label canvas that a
:class:`~napari_diffinfinite.slide.masks.CanvasMask` upsamples (nearest) on demand.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from ..model.codec import Codec
from ..model.mask_encoding import image_to_labels
from ..model.pretrained import DiffusionModel
from ..progress import CancelToken, ProgressCallback
from .decode import decode_tiles
from .guidance import ClassGuidedDenoiser
from .sampler import RandomPatchSampler


def clean_mask(levels: np.ndarray, min_filter: int = 6) -> np.ndarray:
    """Boundaries between classes become 0, then a minimum filter removes thin slivers."""
    cleaned = levels.copy()
    cleaned[find_boundaries(levels, connectivity=1, mode="thick", background=0)] = 0
    if min_filter > 1:
        cleaned = ndimage.minimum_filter(cleaned, size=min_filter, mode="nearest")
    return cleaned


def layout_shape(size: tuple[int, int], mask_downsample: int) -> tuple[int, int]:
    """Shape of the layout canvas sampled for a slide of ``size`` (H, W)."""
    return -(-size[0] // mask_downsample), -(-size[1] // mask_downsample)


#: Rows of the coarse layout upsampled at a time: bounds the float copy of a large slide's layout.
UPSAMPLE_STRIP_ROWS = 64


def upsampled_labels(image: np.ndarray, factor: int, num_labels: int, encoding: str) -> np.ndarray:
    """Labels of the (3, h, w) decoded layout ``image`` upsampled ``factor`` times (bilinear).

    The channels are interpolated as ``torch.nn.functional.interpolate`` does over the whole
    image (``align_corners=False``), one strip of rows at a time: each strip carries one row
    of context on either side, so strips join without a seam and the float copy stays small.
    """
    if factor == 1:
        return image_to_labels(image, num_labels, encoding)
    _, h, w = image.shape
    labels = np.empty((h * factor, w * factor), np.uint8)
    for a in range(0, h, UPSAMPLE_STRIP_ROWS):
        b = min(h, a + UPSAMPLE_STRIP_ROWS)
        lo, hi = max(0, a - 1), min(h, b + 1)
        strip = torch.from_numpy(np.ascontiguousarray(image[:, lo:hi]))[None]
        up = torch.nn.functional.interpolate(strip, scale_factor=factor, mode="bilinear", align_corners=False)[0]
        rows = up[:, (a - lo) * factor : (b - lo) * factor].numpy()
        labels[a * factor : b * factor] = image_to_labels(rows, num_labels, encoding)
    return labels


@torch.no_grad()
def sample_layout(
    model: DiffusionModel,
    codec: Codec,
    size: tuple[int, int],
    *,
    condition: int = 1,
    omega: float = 0.0,
    seed: int = 0,
    steps: int | None = None,
    eta: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Sample a label canvas for a slide of ``size`` (H, W).

    uint8, of shape ``layout_shape(size, mask_downsample // layout_upsample)``: the model
    samples at 1/``mask_downsample``; a ``layout_upsample`` f > 1 upsamples its decoded
    layout f times before the labels are read and cleaned.
    """
    config = model.config
    if config.kind != "mask":
        raise ValueError("sample_layout needs a mask model")
    if not 0 <= condition < config.unet.num_classes:
        raise ValueError(f"condition {condition} is not one of the mask model's {config.unet.num_classes} classes")
    canvas = layout_shape(size, config.mask_downsample)  # where the model samples
    scale, patch = codec.scale_factor, config.latent_patch
    latent_shape = (max(-(-canvas[0] // scale), patch), max(-(-canvas[1] // scale), patch))
    sampler = RandomPatchSampler(
        model.unet,
        channels=codec.latent_channels,
        patch=patch,
        steps=steps or config.sampling_steps,
        omega=omega,
        eta=config.eta if eta is None else eta,
        seed=seed,
        batch_size=batch_size or 16,
        device=device,
        dtype=dtype,
        timesteps=config.timesteps,
        denoiser_class=ClassGuidedDenoiser,
        prediction=config.objective,
    )
    conditions = np.full(latent_shape, condition, dtype=np.uint8)
    state = sampler.run(
        sampler.initial_state(latent_shape), conditions, progress=_stage(progress, "mask"), cancel=cancel
    )
    grey = np.zeros((3, latent_shape[0] * scale, latent_shape[1] * scale), np.float32)

    def write(y0: int, x0: int, rgb: np.ndarray) -> None:
        grey[:, y0 : y0 + rgb.shape[1], x0 : x0 + rgb.shape[2]] = rgb / 255.0

    latent = state.latent.to(device)
    decode_tiles(
        latent,
        codec.tile_decoder(latent),
        scale=scale,
        image_shape=grey.shape[1:],
        write=write,
        margin=codec.context,
        tile=max(config.patch_size, 64),
        cancel=cancel,
    )
    num_labels = config.num_labels or len(config.class_names)
    factor = config.layout_upsample
    levels = upsampled_labels(grey[:, : canvas[0], : canvas[1]], factor, num_labels, config.mask_encoding)
    out = layout_shape(size, config.mask_downsample // factor)
    return clean_mask(levels[: out[0], : out[1]])


def _stage(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    if progress is None:
        return None

    def relay(event):
        event.stage = stage
        progress(event)

    return relay
