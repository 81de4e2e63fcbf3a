"""How long a generation will take, from a quick calibration on the chosen device (no Qt).

:func:`calibrate` generates one patch-sized slide for one step with the loaded model on
the chosen device and dtype (the real engine call, into a temporary folder) and keeps two
rates: seconds per patch evaluation per step, and seconds per store tile for decoding and
writing. :func:`estimate_seconds` scales them to a job: the sampler evaluates about
``(h / P + 1) (w / P + 1)`` patches per step on an ``h x w`` latent with ``P`` latent
positions per patch, more where the cells leave context around them (the
sampler's own count, :func:`~napari_diffinfinite.sampling.sampler.patches_per_run`), and
writes one tile per 512 x 512 px. The one-patch calibration gets
nothing from batching, so the estimate errs high on plain layouts (a 1024 x 1024 px,
6-step demo slide on an idle 2-core CPU: 55 s estimated, about 30 s taken; before the
calibration ran twice, 2 min), while patches showing several tissue classes cost one more
network branch each. It is meant to tell minutes from hours.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Generate asks for a confirmation above this many seconds
CONFIRM_ABOVE_S = 600.0
STORE_TILE = 512


@dataclass(frozen=True)
class Calibration:
    """Measured rates of one model on one device."""

    seconds_per_patch: float  # one patch evaluated for one sampling step (guidance included)
    seconds_per_tile: float  # one 512 px store tile decoded and written
    patch: int  # latent positions per patch side
    scale_factor: int  # slide pixels per latent position
    device: str


def tile_count(size: tuple[int, int]) -> int:
    """Store tiles of a slide of ``size`` (H, W)."""
    return math.ceil(size[0] / STORE_TILE) * math.ceil(size[1] / STORE_TILE)


def calibrate(model: Any, codec: Any, settings: Any) -> Calibration:
    """Time a one-step, one-patch slide with ``model``/``codec`` under ``settings`` (after
    one untimed run of the same, which warms the network up).

    ``settings`` is the job's :class:`engine.GenerateSettings` (device, dtype, batch size,
    ω); the calibration uses one step and label 1 everywhere.
    """
    import dataclasses

    from .. import engine
    from ..slide.store import SlideStore

    config = model.config
    side = int(config.patch_size)
    one_step = dataclasses.replace(settings, steps=1, checkpoint_every_s=3600.0)
    with tempfile.TemporaryDirectory(prefix="diffinfinite-calibration-") as tmp:
        # twice, timing the second: the first call of a network pays for its warm-up (oneDNN
        # choosing kernels, the channels-last copy of the weights), which made the estimate of
        # a 1024 px demo slide 1.8x too long (98 against 55 ms per patch)
        for run in ("warm-up", "timed"):
            out = Path(tmp) / f"{run}.zarr"
            request = engine.GenerateRequest(
                out=out, size=(side, side), models=engine.LoadedModels(image=model, codec=codec),
                layout=engine.LayoutSource(label=1), settings=one_step,
            )  # fmt: skip
            started = time.perf_counter()
            engine.run_generate(request)
            total = time.perf_counter() - started
        stats = SlideStore.open(out, mode="r").provenance.get("sampler_stats") or {}
    sampled = float(stats.get("sampling_seconds") or total)
    patches = max(float(stats.get("patches_per_step") or 1.0), 1.0)
    return Calibration(
        seconds_per_patch=sampled / patches,
        seconds_per_tile=max(total - sampled, 0.0) / tile_count((side, side)),
        patch=int(config.latent_patch),
        scale_factor=max(int(codec.scale_factor), 1),
        device=str(settings.device),
    )


def estimate_seconds(calibration: Calibration, size: tuple[int, int], steps: int) -> float:
    """Seconds to generate a slide of ``size`` (H, W) in ``steps`` steps."""
    from ..sampling.sampler import patches_per_run

    f = calibration.scale_factor
    latent = (math.ceil(size[0] / f), math.ceil(size[1] / f))
    patches = patches_per_run(latent, calibration.patch, int(steps))
    return patches * calibration.seconds_per_patch + tile_count(size) * calibration.seconds_per_tile


def describe_duration(seconds: float) -> str:
    """'about 40 s', 'about 12 min', 'about 3.5 h', 'about 2.1 days', 'about 521 days', 'about 176 years'."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.2g} h"
    days = seconds / 86400
    if days < 10:
        return f"about {days:.2g} days"
    if days < 730:
        return f"about {days:,.0f} days"  # never "5.1e+02 days"
    return f"about {days / 365.25:,.0f} years"
