"""``diffinfinite train``: train an image or mask model on tiles or whole-slide images.

See ``docs/training.md`` for the data layouts, the options and what a run writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import TrainingError

# Training options that default to TrainSettings (or, on --resume, to the saved run).
_SETTING_ARGS = {
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule",
    "warmup_steps": "warmup_steps", "grad_clip": "grad_clip", "ema_decay": "ema_decay", "ema_update_every": "ema_update_every",
    "cond_drop": "cond_drop_prob", "mask_mode": "mask_mode", "lattice_weight": "lattice_weight", "amp": "amp",
    "checkpoint_every": "checkpoint_every", "keep_checkpoints": "keep_checkpoints",
    "num_samples": "num_samples", "sample_steps": "sample_steps", "seed": "seed", "workers": "num_workers",
    "max_minutes": "max_minutes", "log_every": "log_every",
}  # fmt: skip
_DATA_ARGS = ("tiles", "masks", "slide", "annotations", "downsample", "pixel_size_um", "min_tissue",
              "min_labelled", "condition", "skip_unknown_classes")  # fmt: skip


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train an image or mask model on tiles or whole-slide images",
        description="Train a DiffInfinite image model (tiles -> images conditioned on label maps) or mask model "
        "(label layouts) on a folder of tiles with optional masks, or on whole-slide images with QuPath GeoJSON "
        "annotations. Unlabelled tiles and pixels (label 0) train the unconditional branch. Checkpoints are "
        "written in our model format with sample images; --resume continues a run. Multi-GPU: launch with "
        "torchrun --nproc_per_node N -m napari_diffinfinite.cli train ...",
    )
    p.add_argument("kind", choices=["image", "mask"], help="which model to train")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, model/, samples, state, log")
    d = p.add_argument_group("data")
    d.add_argument(
        "--tiles",
        action="append",
        type=Path,
        default=None,
        help="folder of RGB tiles; masks with the same names in TILES/masks (repeatable)",
    )
    d.add_argument("--masks", type=Path, help="folder of label masks for --tiles (default: TILES/masks)")
    d.add_argument(
        "--slide", action="append", type=Path, default=None, help="whole-slide image OpenSlide can read (repeatable)"
    )
    d.add_argument(
        "--annotations",
        action="append",
        type=Path,
        default=None,
        help="QuPath GeoJSON of the matching --slide (default: SLIDE.geojson next to it if present)",
    )
    d.add_argument("--downsample", type=float, help="level-0 pixels per training pixel for slides (default 1)")
    d.add_argument(
        "--pixel-size-um",
        type=float,
        help="training pixel size in microns: slides are read at it (instead of --downsample); "
        "for tiles it is recorded in the model",
    )
    d.add_argument(
        "--min-tissue",
        type=float,
        default=None,
        help="least fraction of detected tissue in a slide tile (default 0.5; 0 keeps background)",
    )
    d.add_argument(
        "--min-labelled",
        type=float,
        default=None,
        help="least fraction of labelled pixels in a tile (default 0 for image models, 0.5 for mask models)",
    )
    d.add_argument(
        "--condition",
        default=None,
        help="mask models: the condition of every tile (an index, default 0), or 'tissue': 1 for tiles "
        "that are mostly tissue (not 'background') and 0 for any tile",
    )
    d.add_argument(
        "--skip-unknown-classes",
        action="store_true",
        help="skip GeoJSON annotations whose class the model does not have (default: error)",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--preset",
        choices=["demo", "official"],
        default="demo",
        help="architecture: 'demo' (small, pixel space, CPU-trainable) or 'official' (DiffInfinite's, "
        "SD-2 VAE latents; needs --vae and a GPU)",
    )
    m.add_argument("--init", help="start from this model (our folder or official model-N.pt); its config is used")
    m.add_argument(
        "--identity-init",
        action="store_true",
        help="start a new network as eps = x_t through its skip path (much faster start for short runs "
        "from scratch; needs --dim >= the input channels; see docs/training.md)",
    )
    m.add_argument("--classes", help="class names, comma-separated; 'unknown' (label 0) is added first if missing")
    m.add_argument("--conditions", help="mask models: names of the conditions, comma-separated (default: the preset's)")
    m.add_argument("--dim", type=int, help="network width (base channels)")
    m.add_argument("--dim-mults", help="channel multipliers per level, e.g. 1,2,4")
    m.add_argument("--patch-size", type=int, help="patch side in pixels (mask models: mask pixels)")
    m.add_argument("--pixel-unshuffle", type=int, help="pixel-space models: fold f x f pixels into channels")
    m.add_argument(
        "--mask-downsample",
        type=int,
        help="mask models: slide pixels per mask pixel (default 4, as upstream: layouts at 1/4 size)",
    )
    m.add_argument(
        "--mask-encoding",
        choices=["grey", "one-hot"],
        help="mask models: labels as DiffInfinite's grey levels (default) or one RGB channel per class "
        "(at most 3 classes; uncertainty between two classes never reads as a third)",
    )
    m.add_argument(
        "--layout-upsample",
        type=int,
        help="mask models (one-hot): upsample sampled layouts this many times before they are read and cleaned; "
        "must divide --mask-downsample (a model that sees a wide field coarsely, with smooth borders)",
    )
    m.add_argument("--sampling-steps", type=int, help="default DDIM steps recorded in the model")
    m.add_argument("--vae", help="folder of the Stable Diffusion 2 VAE (latent models only)")
    m.add_argument(
        "--crop-size",
        type=int,
        help="image models: train on random crops of this many pixels (smaller than --patch-size: cheaper "
        "steps; the convolutional network still samples whole patches)",
    )
    m.add_argument(
        "--cascade-from",
        type=int,
        choices=[2, 4, 8],
        metavar="SCALE",
        help="train a cascade stage (image models): the model samples at SCALE times the magnification of "
        "the level below and is conditioned on it; training pairs come from each tile's SCALE-block mean "
        "(see docs/cascade.md)",
    )
    m.add_argument(
        "--cascade-condition",
        choices=["image", "latent"],
        default=None,
        help="with --cascade-from: condition on the lower level's image (default) or latent",
    )
    m.add_argument(
        "--objective",
        choices=["pred_noise", "pred_v"],
        default=None,
        help="what the network predicts: the noise (default) or v (default for cascade stages)",
    )
    t = p.add_argument_group("training (defaults: the official trainer's)")
    t.add_argument("--steps", type=int, help="optimisation steps in total (default 100000)")
    t.add_argument("--batch-size", type=int, help="global batch size (default 16)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4; betas 0.9, 0.99)")
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], help="after warm-up (default constant)")
    t.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (default 0)")
    t.add_argument("--grad-clip", type=float, help="gradient norm clipping (default 1.0)")
    t.add_argument("--ema-decay", type=float, help="EMA decay (default 0.995)")
    t.add_argument(
        "--ema-update-every",
        type=int,
        help="steps between EMA updates (default 10; 1 suits short runs: the average then lags less)",
    )
    t.add_argument(
        "--cond-drop", type=float, help="condition dropout probability for classifier-free guidance (default 0.1)"
    )
    t.add_argument(
        "--mask-mode",
        choices=["full", "per-label", "per-label-loss"],
        help="image models: the label map the network sees (default 'full', as upstream; 'per-label' "
        "shows one label at a time, as the sampler does; 'per-label-loss' also takes the loss only over that "
        "label's pixels)",
    )
    t.add_argument(
        "--lattice-weight",
        type=float,
        help="pixel models with a pixel unshuffle: weight of the penalty on the unshuffle block's lattice "
        "(default 0, off; see docs/training.md)",
    )
    t.add_argument(
        "--amp",
        choices=["auto", "off", "bf16", "fp16"],
        help="mixed precision (default auto: bf16/fp16 on GPUs, off on CPUs)",
    )
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints with samples (default 1000)")
    t.add_argument("--keep-checkpoints", type=int, help="most recent checkpoints kept (default 5; 0 keeps all)")
    t.add_argument("--num-samples", type=int, help="sample tiles per checkpoint (default 4; 0 for none)")
    t.add_argument("--sample-steps", type=int, help="DDIM steps for checkpoint samples (default: the model's)")
    t.add_argument("--seed", type=int, help="seed of the data order, noise and initial weights (default 0)")
    t.add_argument("--workers", type=int, help="data-loading worker processes (default 0)")
    t.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this wall-clock time")
    t.add_argument("--log-every", type=int, help="steps between log lines in train-log.jsonl (default 10)")
    t.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out at its last checkpoint (same step, optimizer state and data order)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _saved_run(out: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(model config, run settings file) of an existing run, for --resume."""
    from ..training.trainer import SETTINGS_NAME, STATE_NAME, load_training_state

    if not (out / STATE_NAME).is_file():
        return None, {}
    state = load_training_state(out / STATE_NAME)
    settings_file = out / SETTINGS_NAME
    saved = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    saved["settings"] = json.loads(state["settings"])
    return json.loads(state["model_config"]), saved


def _settings(args: argparse.Namespace, saved: dict[str, Any]):
    from ..training.trainer import TrainSettings

    values = dict(saved.get("settings") or {})
    for arg, name in _SETTING_ARGS.items():
        value = getattr(args, arg)
        if value is not None:
            values[name] = value
    return TrainSettings.from_dict(values)


def _model(args: argparse.Namespace, saved_config: dict[str, Any] | None):
    from ..model.config import ModelConfig
    from ..model.pretrained import load_model, new_model
    from ..training.configs import make_model_config, parse_class_names

    if saved_config is not None:
        config = ModelConfig.from_dict(saved_config)
        if config.kind != args.kind:
            raise TrainingError(f"{args.out} holds a {config.kind} model run, not a {args.kind} model run")
        return new_model(config, seed=args.seed or 0, source="resumed")
    if args.cascade_condition and not args.cascade_from:
        raise TrainingError("--cascade-condition needs --cascade-from SCALE")
    if args.cascade_from and args.kind != "image":
        raise TrainingError("--cascade-from trains image models only (cascade stages are image models)")
    if args.mask_encoding and args.kind != "mask":
        raise TrainingError("--mask-encoding is for mask models: diffinfinite train mask ...")
    if args.layout_upsample and args.kind != "mask":
        raise TrainingError("--layout-upsample is for mask models: diffinfinite train mask ...")
    cascade = None
    if args.cascade_from:
        cascade = {"parent_scale": args.cascade_from, "condition": args.cascade_condition or "image"}
    objective = args.objective or ("pred_v" if cascade else None)
    if args.init:
        model = load_model(args.init, expect=args.kind)
        if (cascade and model.config.cascade != cascade) or (args.objective and model.config.objective != objective):
            raise TrainingError(
                f"--init {args.init} is a model with cascade {model.config.cascade} and objective "
                f"{model.config.objective}; train from it without --cascade-from/--objective, or start a new model"
            )
        if args.mask_encoding and model.config.mask_encoding != args.mask_encoding:
            raise TrainingError(
                f"--init {args.init} encodes its layouts as {model.config.mask_encoding!r}; train from it without "
                "--mask-encoding, or start a new model"
            )
        wanted = [n.casefold() for n in parse_class_names(args.classes)] if args.classes else None
        if wanted is not None and [n.casefold() for n in model.config.class_names] != wanted:
            raise TrainingError(
                f"--classes differ from the classes of --init {args.init}: {', '.join(model.config.class_names)}"
            )
        if args.layout_upsample:  # how layouts are read after sampling: the weights do not depend on it
            model.config = dataclasses.replace(model.config, layout_upsample=args.layout_upsample)
        return model
    if args.layout_upsample:  # said in the options' words, before the config's own check
        _check_layout_upsample(args)
    unet = {"dim": args.dim, "dim_mults": _ints(args.dim_mults) if args.dim_mults else None}
    config = make_model_config(
        args.kind, preset=args.preset, class_names=args.classes, unet=unet,
        condition_names=args.conditions.split(",") if args.conditions else None,
        patch_size=args.patch_size, pixel_unshuffle=args.pixel_unshuffle, sampling_steps=args.sampling_steps,
        mask_downsample=args.mask_downsample if args.kind == "mask" else None, mask_encoding=args.mask_encoding,
        layout_upsample=args.layout_upsample if args.kind == "mask" else None, cascade=cascade, objective=objective,
        description=f"{args.kind} model trained with diffinfinite train (the {args.preset} preset's architecture)",
    )  # fmt: skip
    model = new_model(config, seed=args.seed or 0, source="new")
    if args.identity_init:
        from ..training.init import identity_skip_init

        identity_skip_init(model.unet)
    return model


def _check_layout_upsample(args: argparse.Namespace) -> None:
    """``--layout-upsample`` needs one-hot layouts and must divide the mask downsampling."""
    from ..training.configs import make_model_config

    preset = make_model_config("mask", preset=args.preset)
    encoding = args.mask_encoding or preset.mask_encoding
    downsample = args.mask_downsample or preset.mask_downsample
    if encoding != "one-hot":
        raise TrainingError(
            "--layout-upsample upsamples one channel per class: add --mask-encoding one-hot "
            "(upsampled grey levels would draw a third class along every border)"
        )
    if args.layout_upsample < 1 or downsample % args.layout_upsample:
        raise TrainingError(
            f"--layout-upsample {args.layout_upsample} must divide --mask-downsample ({downsample}): the layout canvas "
            "is at layout-upsample / mask-downsample of the slide"
        )


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TrainingError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,4") from None


def _condition(spec: str | None, config):
    from ..training.datasets import ConstantCondition, TissueCondition

    if config.kind != "mask":
        if spec not in (None, "0"):
            raise TrainingError("--condition applies to mask models only")
        return None
    if spec is None:
        return ConstantCondition(0)
    if spec == "tissue":
        names = [n.casefold() for n in config.class_names]
        if "background" not in names:
            raise TrainingError("--condition tissue needs a class named 'background' (glass) among --classes")
        if config.unet.num_classes < 2:
            raise TrainingError("--condition tissue needs a mask model with two conditions (any, tissue)")
        return TissueCondition(background=names.index("background"))
    try:
        value = int(spec)
    except ValueError:
        raise TrainingError(f"--condition must be a condition index or 'tissue', not {spec!r}") from None
    if not 0 <= value < config.unet.num_classes:
        raise TrainingError(f"--condition {value} is not one of the mask model's {config.unet.num_classes} conditions")
    return ConstantCondition(value)


def _data(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in _DATA_ARGS}
    if not given["tiles"] and not given["slide"] and saved.get("data"):
        return dict(saved["data"])  # --resume without data options: the run's own data
    # plain strings, so the data spec can be saved with the run and reused by --resume
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in given.items()}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..training.configs import narrow_network_note
    from ..training.datasets import pixel_size_of
    from ..training.runner import build_dataset, build_sources, run_training

    saved_config, saved = _saved_run(args.out) if args.resume else (None, {})
    settings = _settings(args, saved)
    model = _model(args, saved_config)
    config = model.config
    data = _data(args, saved)
    sources = build_sources(
        config, tiles=data.get("tiles") or [], masks=data.get("masks"), slides=data.get("slide") or [],
        annotations=data.get("annotations") or [], downsample=data.get("downsample"),
        pixel_size_um=data.get("pixel_size_um") if data.get("slide") else None,
        skip_unknown_classes=bool(data.get("skip_unknown_classes")),
    )  # fmt: skip
    if saved_config is None and not args.init:
        pixel = pixel_size_of(sources) or data.get("pixel_size_um")
        if pixel:
            config.pixel_size_um = round(float(pixel), 4)
    min_tissue = 0.5 if data.get("min_tissue") is None else float(data["min_tissue"])
    min_labelled = data.get("min_labelled")
    if min_labelled is None:
        min_labelled = 0.5 if config.kind == "mask" else 0.0
    crop = args.crop_size if args.crop_size is not None else data.get("crop_size")
    data["crop_size"] = crop
    dataset = build_dataset(config, sources, min_tissue=min_tissue, min_labelled=float(min_labelled),
                            condition=_condition(data.get("condition"), config), crop_size=crop)  # fmt: skip
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks
    if not args.quiet and main_process:
        print(f"training a {config.kind} model ({model.num_parameters:,} parameters) on {dataset.summary()}")
    if main_process and (note := narrow_network_note(config)) is not None:
        print(f"warning: {note}", file=sys.stderr)
    result = run_training(
        model, dataset, settings, args.out, vae=args.vae, device=args.device, resume=args.resume,
        show_progress_bar=not args.quiet, metadata={"data": data},
    )  # fmt: skip
    if not main_process:
        return 0
    minutes = result.seconds / 60
    print(f"{result.stopped} at step {result.step} after {minutes:.1f} min; last loss {result.last_loss:.4f}")
    if result.model_dir is not None:
        print(f"model (EMA weights): {result.model_dir}")
        flag = "--model" if config.kind == "image" else "--mask-model"
        print(f"use it:    diffinfinite generate --out slide.zarr {flag} {result.model_dir}")
    if result.stopped != "done":
        print(f"continue:  diffinfinite train {config.kind} --out {args.out} --resume")
    return 0
