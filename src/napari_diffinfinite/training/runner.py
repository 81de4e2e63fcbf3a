"""Putting a run together: data sources, dataset, codec, objective and trainer.

The CLI (``diffinfinite train``) and the demo recipe (``scripts/train_demo.py``) both go
through these functions, so the demo is trained exactly as a user's model would be.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TrainingError
from ..model.codec import make_codec
from ..model.config import ModelConfig
from ..model.pretrained import DiffusionModel
from ..progress import CancelToken, ProgressCallback
from .datasets import (
    ConditionRule,
    LabelledImage,
    SlideSource,
    TileDataset,
    default_annotations,
    slide_downsample,
    tile_folder_sources,
)
from .distributed import init_distributed
from .objectives import ImageObjective, MaskObjective
from .trainer import Trainer, TrainResult, TrainSettings


def label_scale_for(config: ModelConfig) -> int:
    """Training pixels per label pixel the model consumes: the codec's scale factor for an
    image model (labels at latent resolution), ``mask_downsample`` for a mask model."""
    return config.scale_factor if config.kind == "image" else config.mask_downsample


def tile_size_for(config: ModelConfig) -> int:
    """Side of a training tile in training pixels."""
    return config.patch_size if config.kind == "image" else config.patch_size * config.mask_downsample


def num_labels_for(config: ModelConfig) -> int:
    return config.unet.num_classes if config.kind == "image" else (config.num_labels or len(config.class_names))


def build_sources(
    config: ModelConfig,
    *,
    tiles: Sequence[str | os.PathLike] = (),
    masks: str | os.PathLike | None = None,
    slides: Sequence[str | os.PathLike] = (),
    annotations: Sequence[str | os.PathLike | None] = (),
    downsample: float | None = None,
    pixel_size_um: float | None = None,
    skip_unknown_classes: bool = False,
    tissue_max_side: int = 1024,
) -> list[LabelledImage]:
    """Labelled images from tile folders and slides (see :mod:`.datasets`).

    ``annotations`` pairs with ``slides`` by position; a slide without one uses
    ``<slide>.geojson`` next to it if present, else is entirely unlabelled. Slides are read
    at ``downsample`` (level-0 pixels per training pixel), or at ``pixel_size_um``.
    """
    if downsample is not None and pixel_size_um is not None:
        raise TrainingError("give either --downsample or --pixel-size-um, not both")
    if len(annotations) > len(slides):
        raise TrainingError(
            f"{len(annotations)} annotation files for {len(slides)} slides; give one --annotations per --slide"
        )
    scale = label_scale_for(config)
    labels = num_labels_for(config)
    sources: list[LabelledImage] = []
    for folder in tiles:
        sources.extend(tile_folder_sources(folder, masks=masks, label_scale=scale, num_labels=labels,
                                           class_names=config.class_names))  # fmt: skip
    for index, slide in enumerate(slides):
        geojson = annotations[index] if index < len(annotations) else None
        if geojson is None:
            geojson = default_annotations(slide)
        d = downsample if pixel_size_um is None else slide_downsample(slide, pixel_size_um)
        source = SlideSource(
            slide, geojson, class_names=config.class_names, label_scale=scale, downsample=d or 1.0,
            skip_unknown_classes=skip_unknown_classes, tissue_max_side=tissue_max_side,
        )  # fmt: skip
        if int(source.labels.max(initial=0)) >= labels:
            raise TrainingError(f"annotations of {slide} use labels beyond the model's {labels} classes")
        sources.append(source)
    if not sources:
        raise TrainingError("no training data: give a tiles folder (--tiles) or whole-slide images (--slide)")
    return sources


def build_dataset(
    config: ModelConfig,
    sources: Sequence[LabelledImage],
    *,
    min_tissue: float = 0.0,
    min_labelled: float = 0.0,
    condition: ConditionRule | None = None,
    augment: bool = True,
    crop_size: int | None = None,
) -> TileDataset:
    """The dataset a model of ``config`` trains on (tiles of the right size and label scale).

    ``crop_size`` (image models): train on crops of this many pixels instead of whole
    patches. The network is convolutional (its attention pools over positions), so it
    samples patches larger than it was trained on; smaller crops make steps cheaper.
    """
    size = tile_size_for(config)
    if crop_size is not None:
        step = config.scale_factor * config.unet.downsampling if config.kind == "image" else config.mask_downsample
        if config.kind != "image" or crop_size <= 0 or crop_size % step or crop_size > size:
            raise TrainingError(
                f"crop size {crop_size} must be a positive multiple of {step} px and at most the patch size {size} "
                "(image models only)"
            )
        size = crop_size
    return TileDataset(
        sources, tile_size=size, with_images=config.kind == "image", augment=augment,
        min_tissue=min_tissue, min_labelled=min_labelled, condition=condition,
    )  # fmt: skip


def build_objective(config: ModelConfig, codec, settings: TrainSettings) -> ImageObjective | MaskObjective:
    if config.kind == "image":
        return ImageObjective(
            config, codec, cond_drop_prob=settings.cond_drop_prob, mask_mode=settings.mask_mode,
            lattice_weight=settings.lattice_weight,
        )  # fmt: skip
    if settings.lattice_weight:
        raise TrainingError(
            "the lattice penalty is for image models (their pixel-unshuffle lattice); leave --lattice-weight out "
            "when training a mask model"
        )
    return MaskObjective(config, codec, cond_drop_prob=settings.cond_drop_prob)


def run_training(
    model: DiffusionModel,
    dataset: TileDataset,
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    device: str | None = "auto",
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    show_progress_bar: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` into ``out_dir`` (see :class:`Trainer`)."""
    config = model.config
    if config.codec == "sd2-vae" and vae is None:
        raise TrainingError(
            "this model works in Stable Diffusion 2 VAE latents: give the VAE folder with --vae "
            "(a local copy of stabilityai/stable-diffusion-2-base or its vae/ subfolder); pixel-space models need none"
        )
    ctx = init_distributed(device)
    try:
        codec = make_codec(config.codec, vae, latent_scale=config.latent_scale,
                           pixel_unshuffle=config.pixel_unshuffle, device=ctx.device)  # fmt: skip
        trainer = Trainer(
            model, build_objective(config, codec, settings), dataset, settings, Path(out_dir), resume=resume,
            progress=progress, cancel=cancel, show_progress_bar=show_progress_bar, distributed=ctx, metadata=metadata,
        )  # fmt: skip
        return trainer.train()
    finally:
        ctx.close()
