"""napari sample data (File > Open Sample > DiffInfinite): a small synthetic slide, instantly.

The package ships :data:`SAMPLE_ARCHIVE`, a 512 x 512 px slide made by the embedded demo
models (the mask model sampled its tissue layout, the image model painted the slide over
it): the image as a JPEG (quality 92; lossless it would take 750 KB), the labels as a PNG
and the store's provenance as JSON. Opening the sample writes them into a slide store in
the cache folder (``$NAPARI_DIFFINFINITE_CACHE`` or ``~/.cache/napari-diffinfinite/samples/``,
one store per archive content) and opens it like any other store: no model runs, so
napari answers at once. :func:`build_sample_archive` regenerates the archive after the demo
models change (``scripts/screenshots.py`` does, before taking the screenshots).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SAMPLE_SIZE = 512
SAMPLE_SEED = 0
#: the mask model's condition for the layout: 1 = tissue present
SAMPLE_CONDITION = 1
SAMPLE_NAME = "DiffInfinite sample"
SAMPLE_ARCHIVE = Path(__file__).parent / "data" / "sample" / "sample-slide.zip"
IMAGE_MEMBER, LABELS_MEMBER, PROVENANCE_MEMBER = "image.jpg", "labels.png", "provenance.json"
JPEG_QUALITY = 92
#: provenance keys the store writes itself when the sample is unpacked
_STORE_KEYS = ("synthetic", "software", "version", "created", "class_names", "class_colors", "pixel_size_um",
               "complete")  # fmt: skip


def ring_layout(num_classes: int, canvas: int = 64) -> np.ndarray:
    """A (canvas, canvas) uint8 layout of concentric rings cycling through classes 1..n-1
    (used when no mask model is at hand)."""
    classes = max(int(num_classes) - 1, 1)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    centre = (canvas - 1) / 2.0
    radius = np.hypot(yy - centre, xx - centre) / (canvas / 2.0)
    rings = np.minimum((radius * 3).astype(np.int64), 3)
    return (1 + rings % classes).astype(np.uint8)


def _archive_tag(archive: Path) -> str:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def sample_store_path(archive: Path = SAMPLE_ARCHIVE) -> Path:
    """Where the archive's store is unpacked (one folder per archive content)."""
    from .wheel_data import default_cache_dir

    return default_cache_dir() / "samples" / f"sample-{_archive_tag(archive)}.zarr"


def unpack_sample(archive: Path = SAMPLE_ARCHIVE) -> Path:
    """The sample as a slide store in the cache (written on first use, atomically)."""
    from .errors import StoreError
    from .slide.masks import CanvasMask
    from .slide.store import SlideStore

    if not archive.is_file():
        raise StoreError(f"the sample slide {archive} is missing from the installation; reinstall napari-diffinfinite")
    target = sample_store_path(archive)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        record = json.loads(zf.read(PROVENANCE_MEMBER))
        rgb = np.asarray(Image.open(io.BytesIO(zf.read(IMAGE_MEMBER))).convert("RGB"))
        labels = np.asarray(Image.open(io.BytesIO(zf.read(LABELS_MEMBER))))
    keep = {k: v for k, v in record.items() if k not in _STORE_KEYS}
    keep["sample"] = {"image": f"JPEG quality {JPEG_QUALITY} (the shipped sample only)", "archive": archive.name}
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=target.parent)) / "sample.zarr"
    try:
        store = SlideStore.create(
            tmp, rgb.shape[:2], class_names=record["class_names"],
            class_colors=[tuple(c) for c in record["class_colors"]], pixel_size_um=record.get("pixel_size_um"),
            provenance=keep,
        )  # fmt: skip
        tile = store.tile
        for y0 in range(0, rgb.shape[0], tile):
            for x0 in range(0, rgb.shape[1], tile):
                store.write_tile(y0, x0, np.moveaxis(rgb[y0 : y0 + tile, x0 : x0 + tile], -1, 0))
        store.write_labels(CanvasMask(labels, shape=rgb.shape[:2]))
        store.mark_complete()
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # not another process that wrote it first
                raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return target


def make_sample_slide() -> list[tuple[Any, dict, str]]:
    """The npe2 sample-data command: layer data of the shipped sample slide."""
    from .slide.store import SlideStore
    from .widgets._layers import slide_layer_data

    return slide_layer_data(SlideStore.open(unpack_sample(), mode="r"), name=SAMPLE_NAME)


def build_sample_archive(out: Path = SAMPLE_ARCHIVE, *, device: str = "cpu", progress: Any = None) -> Path:
    """Generate the sample with the embedded demo models and pack it into ``out``.

    The mask model samples a tissue layout for the 512 x 512 px slide; the image model
    generates the slide over it with the model's default number of steps.
    """
    from . import engine
    from .slide.masks import CanvasMask
    from .slide.store import SlideStore

    image = engine.load_image_model(None, device=device)
    codec = engine.load_codec(None, image, device=device)
    mask_model = engine.load_mask_model(None, device=device, num_labels=len(image.config.class_names))
    mask_codec = engine.load_codec(None, mask_model, device=device)
    size = (SAMPLE_SIZE, SAMPLE_SIZE)
    layout = engine.sample_layout(
        mask_model, mask_codec, size, condition=SAMPLE_CONDITION, seed=SAMPLE_SEED, device=device, progress=progress
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffinfinite-sample-") as tmp:
        store_path = Path(tmp) / "sample.zarr"
        settings = engine.GenerateSettings(seed=SAMPLE_SEED, device=device)
        engine.generate_slide(
            store_path, size, image_model=image, codec=codec, mask=CanvasMask(layout, shape=size),
            settings=settings, progress=progress,
        )  # fmt: skip
        store = SlideStore.open(store_path, mode="r")
        rgb = np.moveaxis(np.asarray(store.image_level(0)[:]), 0, -1)
        labels = np.asarray(store.label_level(0)[:])
        record = dict(store.provenance)
    image_bytes, label_bytes = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(image_bytes, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    Image.fromarray(labels).save(label_bytes, format="PNG", optimize=True)
    partial = out.with_name(out.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(IMAGE_MEMBER, image_bytes.getvalue())
        zf.writestr(LABELS_MEMBER, label_bytes.getvalue())
        zf.writestr(PROVENANCE_MEMBER, json.dumps(record, indent=1))
    os.replace(partial, out)
    return out
