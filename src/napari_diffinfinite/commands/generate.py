"""``diffinfinite generate``: a synthetic slide from a label mask, headless.

The command turns its options into an :class:`~napari_diffinfinite.engine.GenerateRequest`
and calls :func:`~napari_diffinfinite.engine.run_generate`; SIGINT and SIGTERM cancel the job
at its next batch, after the sampler state has been saved, so ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import engine
from ..errors import SettingsError
from ..progress import Cancelled
from ..threads import AdaptiveThreads, adaptive_progress
from ._progress import TqdmProgress
from ._signals import cancel_on_signals

DEFAULT_SIZE = "2048x2048"
INTERRUPTED = "interrupted; the sampler state was saved: run the same command with --resume to continue"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate a synthetic slide into an OME-Zarr slide store",
        description="Generate a synthetic whole-slide image with DiffInfinite's parallel random-patch sampler. "
        "With no model given, the embedded demo models are used (a layout is sampled by the demo mask model). "
        "Ctrl-C (or SIGTERM) saves the sampler state and stops; --resume continues and gives the same slide.",
    )
    p.add_argument("--out", required=True, type=Path, help="slide store to write (a .zarr folder)")
    p.add_argument(
        "--size", help=f"slide size WIDTHxHEIGHT in pixels (default {DEFAULT_SIZE}; on --resume: the store's)"
    )
    p.add_argument("--model", help="image model: our model folder or an official model-N.pt (default: embedded demo)")
    p.add_argument("--vae", help="folder of the Stable Diffusion 2 VAE (latent models only)")
    p.add_argument(
        "--cascade",
        nargs="+",
        metavar="MODEL",
        help="a multi-magnification cascade instead of --model: the models lowest magnification first "
        "(each after the first a cascade stage), or one cascade file cascade.json; see docs/cascade.md",
    )
    p.add_argument(
        "--skip-glass",
        action="store_true",
        help="with --cascade: where the level below is glass, copy it instead of sampling (faster; pixel-space "
        "stages conditioned on the image)",
    )
    src = p.add_argument_group("layout (choose one; default: sampled by the mask model; on --resume: the store's)")
    src.add_argument(
        "--mask", type=Path, help="label image (PNG/TIFF), QuPath GeoJSON, or a real slide (its tissue layout)"
    )
    src.add_argument("--label", type=int, help="one label everywhere")
    src.add_argument("--mask-model", help="mask model to sample the layout with (default: embedded demo)")
    src.add_argument(
        "--mask-condition",
        help="the mask model's condition, by number or name (the demo's: 0 any, 1 tissue; default 1)",
    )
    src.add_argument("--mask-omega", type=float, help="guidance of the mask model (default 0, as upstream)")
    src.add_argument("--mask-seed", type=int, help="seed of the layout (default: --seed)")
    src.add_argument("--mask-steps", type=int, help="DDIM steps of the mask model (default: the model's)")
    src.add_argument("--tissue-label", type=int, help="label for tissue when --mask is a real slide (default 1)")
    src.add_argument("--num-labels", type=int, help="label levels of an official mask model (5 or 10)")
    src.add_argument(
        "--skip-unknown",
        action="store_true",
        help="leave out GeoJSON annotations whose class the model does not have (default: refuse them)",
    )
    src.add_argument(
        "--include-detections",
        action="store_true",
        help="paint QuPath detections and cells of a GeoJSON too (default: annotations only)",
    )
    s = p.add_argument_group("sampling (on --resume, left out = the store's)")
    s.add_argument("--steps", type=int, help="DDIM steps (default: the model's, 250 for official models)")
    s.add_argument(
        "--omega", type=float, help="guidance strength omega (cond_scale = omega + 1; default: the model's, else 3)"
    )
    s.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default: the model's, 1)")
    s.add_argument("--seed", type=int, help="seed of the slide (default 0)")
    s.add_argument("--device", help="cuda, cuda:N, cpu or auto (default)")
    s.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile with static batch shapes (GPU; slower start, same slide)",
    )
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="precision (default float32)")
    s.add_argument("--batch-size", type=int, help="network evaluations per forward call (default: from free memory)")
    s.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="save the sampler state at most this often while sampling and decoding (default 60)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted store with the same settings")
    d = p.add_argument_group(
        "diffusers pipeline (instead of a DiffInfinite model; see docs/diffusers.md; with no layout, label 0 "
        "everywhere)"
    )
    d.add_argument("--pipeline", help="diffusers pipeline folder (or a model id in the local Hugging Face cache)")
    d.add_argument("--prompt", help="text prompt of the slide (default empty)")
    d.add_argument("--negative-prompt", help="negative prompt (default empty, as in diffusers)")
    d.add_argument(
        "--class-prompt",
        action="append",
        default=[],
        metavar="LABEL=TEXT",
        help="a prompt for one class of the layout (label number or class name); repeat for more classes",
    )
    d.add_argument("--controlnet", help="ControlNet folder conditioned on the layout under each patch")
    d.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet conditioning scale (default 1)")
    d.add_argument(
        "--conditioning",
        choices=["colors", "onehot"],
        help="how the ControlNet sees the layout (default: its diffinfinite.json, else by its input channels)",
    )
    d.add_argument("--lora", help="LoRA weights (.safetensors) for the pipeline")
    d.add_argument("--scheduler", choices=["ddim", "dpm++"], help="diffusers scheduler (default ddim)")
    d.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance scale as in diffusers (= omega + 1; default 7.5)",
    )
    p.add_argument(
        "--allow-dtype-change",
        action="store_true",
        help="on --resume, allow another --dtype than the store's (the slide then differs slightly)",
    )
    p.add_argument(
        "--allow-device-change",
        action="store_true",
        help="on --resume, allow another device type than the store's (the slide then differs slightly)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing slide store written by this tool")
    p.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the sampler state in the finished store (default: dropped, the store holds the slide only)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes (one per GPU) sharing this one slide, launched here; see docs/scale.md (default 1)",
    )
    p.set_defaults(
        interrupted=INTERRUPTED,
        disk_full_fix="free some space, then add --resume to the same command (the store keeps its last saved state)",
    )
    return p


_DIFFUSERS_ONLY = ("prompt", "negative_prompt", "controlnet", "lora", "scheduler", "guidance_scale", "conditioning")


def _diffusers_options(args: argparse.Namespace):
    """The diffusers options of ``--pipeline`` (None without it; its options alone are refused)."""
    from ..diffusers_backend.model import DiffusersOptions

    if args.pipeline is None:
        given = [f"--{k.replace('_', '-')}" for k in _DIFFUSERS_ONLY if getattr(args, k) is not None]
        given += ["--class-prompt"] if args.class_prompt else []
        if given:
            raise SettingsError(f"{', '.join(given)} need a diffusers pipeline: add --pipeline FOLDER")
        return None
    if args.guidance_scale is not None and args.omega is not None:
        raise SettingsError("--guidance-scale is omega + 1: give one of --guidance-scale and --omega")
    class_prompts: dict[int | str, str] = {}
    for item in args.class_prompt:
        label, sep, text = item.partition("=")
        if not sep or not label.strip():
            raise SettingsError(
                f"--class-prompt {item!r} is not LABEL=TEXT (e.g. --class-prompt tumour='solid sheets')"
            )
        label = label.strip()
        class_prompts[int(label) if label.isdigit() else label] = text
    return DiffusersOptions(
        pipeline=args.pipeline, prompt=args.prompt or "", negative_prompt=args.negative_prompt,
        class_prompts=class_prompts, controlnet=args.controlnet, lora=args.lora, scheduler=args.scheduler or "ddim",
        controlnet_scale=args.controlnet_scale, conditioning=args.conditioning,
    )  # fmt: skip


def _condition(text: str | None) -> int | str | None:
    """``--mask-condition``: a number, or a condition's name (resolved once the mask model is loaded)."""
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text.strip()


def request_from_args(args: argparse.Namespace) -> engine.GenerateRequest:
    """The engine request the options describe (nothing is loaded here; diffusers options are parsed)."""
    diffusers = _diffusers_options(args)
    if diffusers is not None and args.guidance_scale is not None:
        args.omega = args.guidance_scale - 1.0
    size = args.size if args.size is not None else (None if args.resume else DEFAULT_SIZE)
    if args.tissue_label is not None and args.mask is None:  # an option that does nothing is a mistake
        raise SettingsError("--tissue-label says which label a real slide's tissue gets: it needs --mask SLIDE")
    if args.num_labels is not None and args.mask_model is None:
        raise SettingsError("--num-labels describes an official mask checkpoint: it needs --mask-model")
    layout = engine.LayoutSource(
        mask=args.mask, label=args.label, mask_model=args.mask_model, condition=_condition(args.mask_condition),
        omega=args.mask_omega, seed=args.mask_seed, steps=args.mask_steps, tissue_label=1 if args.tissue_label is None else args.tissue_label, num_labels=args.num_labels,
        skip_unknown=args.skip_unknown, include_detections=args.include_detections,
    )  # fmt: skip
    settings = engine.GenerateSettings(
        steps=args.steps, omega=args.omega, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, checkpoint_every_s=args.checkpoint_every, compile=args.compile,
    )  # fmt: skip
    cascade = getattr(args, "cascade", None)
    if cascade is not None:
        from ..engine.cascade import read_cascade_file

        if args.model is not None:
            raise SettingsError("give either --model (one model) or --cascade (several), not both")
        if len(cascade) == 1 and Path(cascade[0]).suffix.lower() == ".json":
            cascade = read_cascade_file(cascade[0])
    if getattr(args, "skip_glass", False) and cascade is None:
        raise SettingsError("--skip-glass applies to a cascade (--cascade)")
    return engine.GenerateRequest(
        cascade=cascade,
        skip_glass=True if getattr(args, "skip_glass", False) else None,
        out=args.out, size=None if size is None else engine.parse_size(size), image_model=args.model, vae=args.vae,
        layout=layout, settings=settings, resume=args.resume, overwrite=args.overwrite, keep_state=args.keep_state,
        allow_dtype_change=args.allow_dtype_change, allow_device_change=args.allow_device_change,
        diffusers=diffusers,
    )  # fmt: skip


def _already_complete(path: Path) -> bool:
    """Whether ``path`` is a finished slide store (a ``--resume`` of it has nothing to do)."""
    if not path.is_dir():
        return False
    from ..errors import DiffInfiniteError
    from ..slide.store import SlideStore

    try:
        return bool(SlideStore.open(path).provenance.get("complete"))
    except (DiffInfiniteError, OSError, ValueError):
        return False  # not a readable store: the engine says what is wrong with it


def run(args: argparse.Namespace) -> int:
    from ..distributed_slide import launched_distributed, rank, run_generate_distributed

    if args.pipeline is not None and (args.nproc != 1 or launched_distributed()):
        raise SettingsError("a diffusers pipeline runs in one process for now; leave out --nproc")
    if args.nproc != 1 and getattr(args, "cascade", None):
        raise SettingsError("--cascade runs in one process; leave out --nproc")
    if args.nproc != 1 and not launched_distributed():
        from ._ranks import run_ranks

        return run_ranks(args)
    request = request_from_args(args)
    if request.resume and _already_complete(request.path):
        print(f"{request.path} is already complete; nothing to do (describe it: diffinfinite info {request.path})")
        return 0
    bar = TqdmProgress(disable=args.quiet or rank() != 0)
    # threads by the cores free now, then the fastest count as the load changes: see threads.py
    progress = adaptive_progress(bar)
    started = time.perf_counter()
    try:
        with cancel_on_signals() as token:
            generate = run_generate_distributed if launched_distributed() else engine.run_generate
            store = generate(request, progress=progress, cancel=token)
    except (Cancelled, KeyboardInterrupt):
        if not request.path.exists():  # stopped before the store was created (e.g. sampling the layout)
            args.interrupted = "interrupted before anything was written; run the same command to start again"
        raise
    finally:
        bar.close()
    if rank() != 0:
        return 0  # rank 0 reports for the group
    elapsed = time.perf_counter() - started
    provenance = store.provenance
    source = (provenance.get("image_model") or {}).get("source", "")
    if provenance.get("diffusers"):
        d = provenance["diffusers"]
        print(f"diffusers: {d['scheduler_class']}, guidance {d['guidance_scale']:g}, prompt {d['prompt']!r}")
    if source.startswith("random-init"):
        print(f"note: {source}; train the demo with scripts/train_demo.py or pass --model")
    stats = provenance.get("sampler_stats", {})
    if provenance.get("mask"):
        print(engine.describe_layout(provenance["mask"]))
    levels = f"{store.num_levels} level{'s' if store.num_levels != 1 else ''}"
    print(f"wrote {store.path} ({engine.format_size(store.shape)} px, {levels}) in {elapsed:.1f} s")
    if stats:
        print(
            f"sampler: {stats['patches_per_step']:.1f} patches/step (ideal {stats['ideal_patches_per_step']:.1f}), "
            f"{stats['network_evals']} network evaluations, batch {stats['batch_size']}, {stats['device']}"
        )
    for level in provenance.get("cascade_stats", []):
        print(
            f"cascade level {level['level'] + 1} (1/{level['downscale']} magnification): "
            f"{level['patches_per_step']:.1f} patches/step, {level['network_evals']} network evaluations"
        )
    print(f"time by stage: {bar.timing()}")
    if isinstance(progress, AdaptiveThreads):
        print(f"torch threads (chosen while running): {progress.summary()}")
    print(f"open it in napari:   napari {store.path}")
    print(f"or from Python:      napari.Viewer().open('{store.path}', plugin='napari-diffinfinite')")
    print(f"describe it:         diffinfinite info {store.path}")
    return 0
