"""Canvas-to-slide geometry and what a slide costs: one place for sizes, latents and limits.

A slide of (H, W) pixels is sampled on a latent of ``ceil(H / s) x ceil(W / s)`` positions
(``s`` = the codec's scale factor) and decoded into 512 px store tiles. A slide must be at
least one patch (the model's ``patch_size`` pixels) on each side: the sampler works patch by
patch, so a thinner slide would be padded, and a 1 x 100000 px request would cost as much as
a patch x 100000 px one while giving nothing back. Before anything is written, the latent
working set is checked against the device's free memory and the store against the free disk.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ..errors import SettingsError
from ..model.config import ModelConfig

if TYPE_CHECKING:  # the napari reader and canvas use this module's geometry without torch (4 s to import)
    import torch

#: Copies of the latent the sampler holds on its device: the step's input, its output, the
#: step's keyed noise, and the host copy handed to the state checkpoint.
LATENT_COPIES = 4
#: Of the free memory, at most this fraction may go to the latent (the network needs the rest).
MEMORY_FRACTION = 0.8
STORE_TILE = 512


def parse_size(text: str) -> tuple[int, int]:
    """ "WxH" (or a single number for a square) -> (H, W)."""
    try:
        parts = [int(v) for v in str(text).lower().replace(" ", "").split("x")]
    except ValueError:
        raise SettingsError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 2048x2048") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise SettingsError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 2048x2048")
    return parts[1], parts[0]


def format_size(size: tuple[int, int]) -> str:
    """(H, W) -> "WxH", as the CLI takes it."""
    return f"{size[1]}x{size[0]}"


def latent_shape(size: tuple[int, int], config: ModelConfig, scale_factor: int | None = None) -> tuple[int, int]:
    """The latent canvas for a slide of ``size`` (H, W): covers the slide, at least one patch."""
    s = scale_factor or config.scale_factor
    p = config.latent_patch
    return max(-(-size[0] // s), p), max(-(-size[1] // s), p)


#: A painted or imported label canvas has at most this many pixels on its longer side.
MAX_CANVAS_SIDE = 4096


def canvas_downsample(size: tuple[int, int], max_side: int = MAX_CANVAS_SIDE) -> int:
    """Slide pixels per canvas pixel: the smallest power of two that brings the longer side to ``max_side``."""
    factor = 1
    while max(size) / factor > max_side:
        factor *= 2
    return factor


def canvas_shape(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """The label canvas of a slide of ``size`` (H, W) at ``factor`` slide pixels per canvas pixel."""
    return max(1, -(-int(size[0]) // int(factor))), max(1, -(-int(size[1]) // int(factor)))


def canvas_transform(
    size: tuple[int, int], canvas: tuple[int, int], pixel_size_um: float | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``scale`` and ``translate`` that lay a canvas of shape ``canvas`` exactly over the slide.

    Slide pixel y takes canvas pixel ``(y * ch) // H`` (nearest neighbour, what
    :class:`~napari_diffinfinite.slide.masks.CanvasMask` does), so canvas pixel j covers slide
    pixels [j*s, (j+1)*s) with s = H / ch; a viewer placing pixel centres shifts by (s - 1) / 2.
    With ``pixel_size_um`` both are in micrometres (world units of a calibrated viewer), else
    in slide pixels.
    """
    px = float(pixel_size_um) if pixel_size_um else 1.0
    ratio = (float(size[0]) / float(canvas[0]), float(size[1]) / float(canvas[1]))
    scale = (ratio[0] * px, ratio[1] * px)
    return scale, ((ratio[0] - 1.0) / 2.0 * px, (ratio[1] - 1.0) / 2.0 * px)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class SlideCost:
    """What generating a slide needs: latent working set on the device, store size on disk."""

    latent_shape: tuple[int, int]
    latent_bytes: int  # one float32 copy of the latent
    working_bytes: int  # what the sampler holds on its device
    store_bytes: int  # upper bound: uncompressed image + label pyramids + two resume slots

    def describe(self) -> str:
        h, w = self.latent_shape
        return f"latent {w}x{h} ({_gb(self.working_bytes)} to sample), store up to {_gb(self.store_bytes)}"


def slide_cost(size: tuple[int, int], config: ModelConfig, channels: int, scale_factor: int | None = None) -> SlideCost:
    """Estimate the memory and disk a slide of ``size`` (H, W) needs with a model of ``config``."""
    shape = latent_shape(size, config, scale_factor)
    latent = channels * shape[0] * shape[1] * 4
    pixels = size[0] * size[1]
    pyramid = 4 / 3  # 1 + 1/4 + 1/16 + ...
    store = int(pixels * (3 + 1) * pyramid) + 2 * latent
    return SlideCost(shape, latent, LATENT_COPIES * latent, store)


def free_memory(device: torch.device) -> int:
    """Bytes the sampler may use on ``device``: free GPU memory, or available host memory."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


#: Float32 values a network holds per latent pixel of a patch and per unit of ``unet.dim`` during one
#: evaluation (no gradients). Measured: the demo mask network (dim 16, mults 1-8) peaks at about 53.
ACTIVATION_VALUES_PER_DIM = 64


def patch_eval_bytes(config: ModelConfig) -> int | None:
    """About the memory one network evaluation on one patch of a model of ``config`` takes.

    None for a config without a DiffInfinite network (a diffusers pipeline, whose folder check
    caps its sample size instead: ``diffusers_backend/folder.py``).
    """
    width = getattr(getattr(config, "unet", None), "dim", None)
    if width is None:
        return None
    return config.latent_patch**2 * 4 * width * ACTIVATION_VALUES_PER_DIM


def patch_batch_that_fits(config: ModelConfig, device: torch.device, wanted: int) -> int:
    """The largest batch of patch evaluations up to ``wanted`` that fits in free memory.

    Refuses a model whose single patch does not fit: the caps of a model's config allow a
    patch of 8192 px, and a network run over it would take tens of GB.
    """
    per_eval = patch_eval_bytes(config)
    if per_eval is None:
        return int(wanted)
    available = MEMORY_FRACTION * free_memory(device)
    if per_eval > available:
        raise SettingsError(
            f"the model's {config.patch_size} px patches need about {_gb(per_eval)} per network evaluation "
            f"(width {config.unet.dim}), but {device.type} has {_gb(available / MEMORY_FRACTION)} free; "
            "use a model with smaller patches (patch_size in its config.json) or a device with more memory"
        )
    return max(1, min(int(wanted), int(available // per_eval)))


def free_disk(path: Path) -> int:
    """Free bytes on the file system that will hold ``path`` (its nearest existing ancestor)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return int(shutil.disk_usage(folder).free)


def check_slide_size(
    size: tuple[int, int],
    config: ModelConfig,
    *,
    channels: int,
    device: torch.device,
    out: Path | None,
    scale_factor: int | None = None,
    existing_store: bool = False,
) -> SlideCost:
    """Refuse a slide smaller than one patch per side, or one the device memory or disk cannot hold.

    Called before anything is written or allocated; the message gives the numbers.
    """
    h, w = size
    p = config.patch_size
    if h < p or w < p:
        raise SettingsError(
            f"the slide {format_size(size)} px is smaller than one patch ({p} px) on a side; "
            f"a slide must be at least {p}x{p} px for this model"
        )
    patch_batch_that_fits(config, device, 1)
    cost = slide_cost(size, config, channels, scale_factor)
    available = free_memory(device)
    if cost.working_bytes > MEMORY_FRACTION * available:
        raise SettingsError(
            f"a {format_size(size)} px slide needs {_gb(cost.working_bytes)} for its latent "
            f"({cost.latent_shape[1]}x{cost.latent_shape[0]} x {channels} channels, float32, {LATENT_COPIES} copies) "
            f"but {device.type} has {_gb(available)} free; choose a smaller --size"
        )
    if out is not None and not existing_store:
        disk = free_disk(out)
        if cost.store_bytes > disk:
            raise SettingsError(
                f"a {format_size(size)} px slide store can take up to {_gb(cost.store_bytes)} but only "
                f"{_gb(disk)} is free where {out} would go; free some space or choose a smaller --size"
            )
    return cost
