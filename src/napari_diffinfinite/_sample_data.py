"""napari sample data (File > Open Sample > DiffInfinite): a small synthetic slide.

The 512 x 512 px slide is generated with the embedded default model (on the GPU when
there is one) over a simple ring layout that uses every class of the model, in 20 DDIM
steps, written to a slide store in the cache folder
(``$NAPARI_DIFFINFINITE_CACHE`` or ``~/.cache/napari-diffinfinite/samples/``) and opened
like any other store. A second request reuses the finished store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_SIZE = 512
#: DDIM steps: fewer than a model's default (50 for the demo) so that the first request
#: stays short on a CPU; napari waits for a sample command to return
SAMPLE_STEPS = 20
SAMPLE_SEED = 0


def ring_layout(num_classes: int, canvas: int = 64) -> np.ndarray:
    """A (canvas, canvas) uint8 layout of concentric rings cycling through classes 1..n-1."""
    classes = max(int(num_classes) - 1, 1)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    centre = (canvas - 1) / 2.0
    radius = np.hypot(yy - centre, xx - centre) / (canvas / 2.0)
    rings = np.minimum((radius * 3).astype(np.int64), 3)
    return (1 + rings % classes).astype(np.uint8)


def sample_store_path(sha256: str, size: int, steps: int) -> Path:
    """Where the sample slide of the model with ``sha256`` is cached."""
    from .sample_data import default_cache_dir

    tag = (sha256 or "default")[:12]
    return default_cache_dir() / "samples" / f"sample-{tag}-{size}px-{steps}steps.zarr"


def generate_sample_slide(
    out: Path | None = None, size: int | None = None, steps: int | None = None, progress: Any = None
) -> Path:
    """Generate (or reuse) the sample slide and return its store path.

    ``size``/``steps`` default to :data:`SAMPLE_SIZE`/:data:`SAMPLE_STEPS`.
    """
    from . import engine
    from .slide.masks import CanvasMask
    from .slide.store import SlideStore

    size = int(size or SAMPLE_SIZE)
    steps = int(steps or SAMPLE_STEPS)
    device = engine.available_devices()[0]
    model = engine.load_image_model(None, device=device)
    info = engine.describe_model(model)
    out = Path(out) if out is not None else sample_store_path(str(info.get("sha256") or ""), size, steps)
    if out.is_dir():
        try:
            if SlideStore.open(out, mode="r").provenance.get("complete"):
                return out
        except Exception:  # a damaged cache entry: generate it again
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    codec = engine.load_codec(None, model, device=device)
    mask = CanvasMask(ring_layout(int(info.get("num_classes") or 2)), shape=(size, size))
    settings = engine.GenerateSettings(steps=steps, seed=SAMPLE_SEED, device=device)
    engine.generate_slide(
        out, (size, size), image_model=model, codec=codec, mask=mask, settings=settings,
        overwrite=True, progress=progress,
    )  # fmt: skip
    return out


def make_sample_slide() -> list[tuple[Any, dict, str]]:
    """The npe2 sample-data command: layer data of the generated sample slide."""
    from .slide.store import SlideStore
    from .widgets._layers import slide_layer_data

    path = generate_sample_slide()
    return slide_layer_data(SlideStore.open(path, mode="r"), name="DiffInfinite sample")
