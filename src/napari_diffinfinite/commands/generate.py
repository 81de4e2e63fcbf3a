"""``diffinfinite generate``: a synthetic slide from a label mask, headless."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import engine
from ..errors import MaskError
from ..slide.masks import CanvasMask, ConstantMask
from ._progress import TqdmProgress


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate a synthetic slide into an OME-Zarr slide store",
        description="Generate a synthetic whole-slide image with DiffInfinite's parallel random-patch sampler. "
        "With no model given, the embedded demo models are used (a layout is sampled by the demo mask model).",
    )
    p.add_argument("--out", required=True, type=Path, help="slide store to write (a .zarr folder)")
    p.add_argument("--size", default="2048x2048", help="slide size WIDTHxHEIGHT in pixels (default 2048x2048)")
    p.add_argument("--model", help="image model: our model folder or an official model-N.pt (default: embedded demo)")
    p.add_argument("--vae", help="folder of the Stable Diffusion 2 VAE (latent models only)")
    src = p.add_argument_group("layout (choose one; default: sampled by the mask model)")
    src.add_argument("--mask", type=Path, help="label image (PNG/TIFF), QuPath GeoJSON, or a real slide (its tissue layout)")
    src.add_argument("--label", type=int, help="one label everywhere")
    src.add_argument("--mask-model", help="mask model to sample the layout with (default: embedded demo)")
    src.add_argument("--mask-condition", type=int, default=1, help="mask model class to condition on (default 1)")
    src.add_argument("--mask-omega", type=float, default=0.0, help="guidance of the mask model (default 0, as upstream)")
    src.add_argument("--mask-seed", type=int, help="seed of the layout (default: --seed)")
    src.add_argument("--tissue-label", type=int, default=1, help="label for tissue when --mask is a real slide")
    src.add_argument("--num-labels", type=int, help="label levels of an official mask model (5 or 10)")
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=int, help="DDIM steps (default: the model's, 250 for official models)")
    s.add_argument("--omega", type=float, help="guidance strength omega (cond_scale = omega + 1; default 3)")
    s.add_argument("--eta", type=float, help="DDIM eta (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--batch-size", type=int, help="network evaluations per forward call (default: from free memory)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted store with the same settings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _mask(args, size, image_model, progress) -> tuple[object, dict]:
    names = image_model.config.class_names
    chosen = [o for o in ("mask", "label", "mask_model") if getattr(args, o) is not None]
    if len(chosen) > 1:
        raise MaskError(f"choose one layout source, not {', '.join('--' + c.replace('_', '-') for c in chosen)}")
    if args.mask is not None:
        return engine.mask_from_path(args.mask, size, names, tissue_label=args.tissue_label)
    if args.label is not None:
        if not 0 <= args.label < len(names):
            raise MaskError(f"label {args.label} is not one of the model's classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
        return ConstantMask(args.label, size), {"type": "constant", "label": args.label}
    if args.mask_model is None and args.model is not None:
        raise MaskError(
            "give a layout for this model: --mask FILE (label image, GeoJSON or real slide), --label N, "
            "or --mask-model PATH to sample one"
        )
    mask_model = engine.load_mask_model(args.mask_model, device=args.device, num_labels=args.num_labels)
    if mask_model.config.class_names != names and len(mask_model.config.class_names) != len(names):
        raise MaskError(
            f"the mask model produces {len(mask_model.config.class_names)} labels but the image model has "
            f"{len(names)} classes; use a matching mask model"
        )
    codec = engine.load_codec(args.vae, mask_model, device=args.device)
    seed = args.seed if args.mask_seed is None else args.mask_seed
    canvas = engine.sample_layout(
        mask_model, codec, size, condition=args.mask_condition, omega=args.mask_omega, seed=seed,
        device=args.device, progress=progress,
    )  # fmt: skip
    info = {"type": "sampled", "mask_model": {"source": mask_model.source, "sha256": mask_model.sha256},
            "condition": args.mask_condition, "omega": args.mask_omega, "seed": seed}  # fmt: skip
    return CanvasMask(canvas, size), info


def run(args: argparse.Namespace) -> int:
    size = engine.parse_size(args.size)
    progress = TqdmProgress(disable=args.quiet)
    started = time.perf_counter()
    image_model = engine.load_image_model(args.model, device=args.device)
    if image_model.source.startswith("random-init"):
        print(f"note: {image_model.source}; train the demo with scripts/train_demo.py or pass --model")
    codec = engine.load_codec(args.vae, image_model, device=args.device)
    if args.resume and args.out.exists():
        from ..slide.store import SlideStore

        canvas = SlideStore.open(args.out).load_canvas()
        if canvas is None:
            raise MaskError(f"{args.out} has no saved layout to resume with; generate it again with --overwrite")
        mask, mask_info = CanvasMask(canvas, size), SlideStore.open(args.out).provenance.get("mask", {})
    else:
        mask, mask_info = _mask(args, size, image_model, progress)
    settings = engine.GenerateSettings(
        steps=args.steps, omega=3.0 if args.omega is None else args.omega, eta=args.eta, seed=args.seed,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    try:
        store = engine.generate_slide(
            args.out, size, image_model=image_model, codec=codec, mask=mask, settings=settings,
            resume=args.resume, overwrite=args.overwrite, mask_info=mask_info, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    stats = store.provenance.get("sampler_stats", {})
    print(f"wrote {store.path} ({size[1]}x{size[0]} px, {store.num_levels} levels) in {elapsed:.1f} s")
    if stats:
        print(
            f"sampler: {stats['patches_per_step']:.1f} patches/step (ideal {stats['ideal_patches_per_step']:.1f}), "
            f"{stats['network_evals']} network evaluations, batch {stats['batch_size']}, {stats['device']}"
        )
    print(f"open it in napari:   napari {store.path}")
    print(f"or from Python:      napari.Viewer().open('{store.path}', plugin='napari-diffinfinite')")
    print(f"describe it:         diffinfinite info {store.path}")
    return 0
