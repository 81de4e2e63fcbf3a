#!/usr/bin/env python
"""Train a two-level demo cascade on the CMU slide: ``python scripts/train_demo_cascade.py``.

Level 1 (low magnification) is the embedded demo image model itself (2 um/px, trained by
``scripts/train_demo.py``). Level 2 is a cascade stage at twice its magnification (1 um/px):
the demo architecture (pixel space, 4 x 4 unshuffle) with the lower level's image as 48 extra
input channels, the v objective, trained with the same trainer as
``diffinfinite train image --cascade-from 2`` on the same slide read at 1 um/px. Its training
pairs are built from each tile's 2 x 2 block mean (``training/objectives.py``).

What it writes into ``WORK`` (default ``build/demo-cascade``):

* ``stage/model``: the cascade stage (EMA weights, our model format);
* ``cascade.json``: ``{"models": [demo image model, stage/model]}``, for
  ``diffinfinite generate --cascade WORK/cascade.json``;
* ``report.json``: steps, losses, times and the machine;
* with ``--baseline``: instead, the single-scale baseline ``single/model``: the same
  architecture, objective, data and steps at the stage's magnification (1 um/px), without the
  lower level's condition, so that a comparison isolates what the cascade adds;
* with ``--generate``: a cascade slide and a baseline slide (``cascade.zarr``, ``single.zarr``)
  on the training slide's own layout at 1 um/px, the same seed, for a Patch-FID comparison
  with the real slide read at the same pixel size (``diffinfinite evaluate``, docs/cascade.md).

The weights are not shipped with the package (see docs/cascade.md for why and for the commands).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from napari_diffinfinite.demo import demo_image_config, demo_model_dir
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import new_model
from napari_diffinfinite.training import demo_data
from napari_diffinfinite.training.runner import build_dataset, build_sources, run_training
from napari_diffinfinite.training.trainer import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SCALE = 2  # the stage samples at twice the demo model's magnification


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "build" / "demo-cascade", help="run folder")
    p.add_argument("--steps", type=int, default=8000, help="optimisation steps of the stage")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="train on crops of this many pixels")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (50-step warm-up, cosine decay)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock cap of the training run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --work")
    p.add_argument("--baseline", action="store_true",
                   help="train the single-scale baseline (no lower-level condition) into WORK/single")  # fmt: skip
    p.add_argument("--generate", action="store_true",
                   help="generate the cascade and baseline slides on the training layout (skips training)")  # fmt: skip
    p.add_argument("--features", default="random",
                   help="--evaluate's features: random (three random-weight CNNs) or any extractor of "
                   "`diffinfinite evaluate --features` (inception needs its weights; see docs/evaluate.md)")  # fmt: skip
    p.add_argument("--evaluate", action="store_true",
                   help="Patch-FID, FID and KID of both slides against the real slide at each level (skips training)")  # fmt: skip
    return p.parse_args(argv)


def stage_config(pixel_size_um: float) -> ModelConfig:
    """The demo image architecture as a cascade stage conditioned on the lower level's image."""
    data = demo_image_config().to_dict()
    data.update(
        cascade={"parent_scale": SCALE, "condition": "image"}, objective="pred_v", pixel_size_um=round(pixel_size_um, 3),
        description="napari-diffinfinite demo cascade stage: the demo image model's architecture at twice its "
        "magnification, conditioned on the lower level's image (48 extra channels), v objective",
    )  # fmt: skip
    data["unet"]["condition_channels"] = 3 * data["pixel_unshuffle"] ** 2
    return ModelConfig.from_dict(data)


def baseline_config(pixel_size_um: float) -> ModelConfig:
    """The stage without its condition: the single-scale model a cascade is compared with."""
    data = demo_image_config().to_dict()
    data.update(
        objective="pred_v", pixel_size_um=round(pixel_size_um, 3),
        description="napari-diffinfinite demo single-scale baseline: the cascade stage's architecture, objective "
        "and data at 1 um/px, without the lower level's condition",
    )  # fmt: skip
    return ModelConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.generate or args.evaluate:
        report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
        if args.generate:
            report["generate"] = generate_pair(work)
        if args.evaluate:
            report["evaluate"] = evaluate_pair(work, features=args.features)
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: report[k] for k in ("generate", "evaluate") if k in report}, indent=2))
        return 0
    slide = demo_data.demo_slide()
    downsample = demo_data.DEMO_DOWNSAMPLE // SCALE  # the slide read at twice the demo magnification
    rgb, pixel_size = demo_data.read_slide_rgb(slide, demo_data.DEMO_DOWNSAMPLE)
    derived = demo_data.derive_labels(rgb, pixel_size)
    geojson = demo_data.write_geojson(derived.labels, work / "cmu_small_region.geojson", demo_data.DEMO_DOWNSAMPLE)
    config = (baseline_config if args.baseline else stage_config)(pixel_size / SCALE)
    run = work / ("single" if args.baseline else "stage")
    sources = build_sources(config, slides=[slide], annotations=[geojson], downsample=downsample)
    dataset = build_dataset(config, sources, min_tissue=0.02, crop_size=args.crop)
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=50, lr_schedule="cosine",
        mask_mode="per-label-loss", cond_drop_prob=0.15, checkpoint_every=250, num_samples=4, sample_steps=25,
        ema_update_every=1, seed=0, max_minutes=args.max_minutes, log_every=20,
    )  # fmt: skip
    print(f"{'single-scale baseline' if args.baseline else 'cascade stage'}: {dataset.summary()}")
    started = time.perf_counter()
    result = run_training(new_model(config, seed=0), dataset, settings, run, device=args.device,
                          resume=args.resume, metadata={"data": {"slide": str(slide), "downsample": downsample}})  # fmt: skip
    log = [json.loads(line) for line in (run / "train-log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    cascade_file = work / "cascade.json"
    if not args.baseline:
        models = {"models": [str(demo_model_dir("image")), "stage/model"]}
        cascade_file.write_text(json.dumps(models, indent=2) + "\n")
    report = {
        "steps": result.step, "stopped": result.stopped, "seconds": round(time.perf_counter() - started, 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "tiles": len(dataset), "crop_px": args.crop, "batch": args.batch, "pixel_size_um": config.pixel_size_um,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "cascade_file": str(cascade_file),
    }  # fmt: skip
    name = "baseline-report.json" if args.baseline else "report.json"
    (work / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def generate_pair(work: Path) -> dict:
    """The cascade slide and the baseline slide on the training slide's own layout at 1 um/px.

    The layout is the slide's derived labels (2 um/px) read at twice their resolution, so both
    slides have the real slide's class proportions and shapes and Patch-FID against the real
    slide at 1 um/px compares texture and structure, not layouts. Same seed for both.
    """
    from PIL import Image

    for needed in (work / "cascade.json", work / "single" / "model"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: train the stage and the baseline (--baseline) first")
    rgb, pixel_size = demo_data.read_slide_rgb(demo_data.demo_slide(), demo_data.DEMO_DOWNSAMPLE)
    labels = demo_data.derive_labels(rgb, pixel_size).labels.repeat(SCALE, 0).repeat(SCALE, 1)
    layout = work / "layout-1um.png"
    Image.fromarray(labels.astype("uint8")).save(layout)
    h, w = labels.shape
    common = ["--size", f"{w}x{h}", "--mask", str(layout), "--seed", "0", "-q", "--overwrite"]
    cli = [sys.executable, "-m", "napari_diffinfinite"]
    timings = {}
    for name, models in (("cascade", ["--cascade", str(work / "cascade.json")]), ("single", ["--model", str(work / "single" / "model")])):  # fmt: skip
        started = time.perf_counter()
        subprocess.run([*cli, "generate", "--out", str(work / f"{name}.zarr"), *models, *common], check=True)
        timings[name] = round(time.perf_counter() - started, 1)
    return {"size": [w, h], "layout": str(layout), "seconds": timings}


def evaluate_pair(
    work: Path, levels: tuple[int, ...] = (0, 1), feature_seeds: tuple[int, ...] = (0, 1, 2), features: str = "random"
) -> dict:
    """Cascade and baseline slide against the real slide, at each of the cascade's levels.

    Level k is compared at 2**k times the stage's pixel size (1 and 2 um/px), the real slide
    box-filtered to it (``evaluate``'s pixel-size matching). Features: random-weight CNNs
    (``random:SEED``), the only extractor available without downloads here; their numbers mean
    something only side by side, so every figure is given for both slides under the same
    three feature seeds. Any other ``features`` (e.g. ``inception``) is used once. Patch-FID crops (64 to 256 px, matched positions) include glass, as
    the layouts are the same; FID/KID tiles are tissue tiles of 64 px.
    """
    from napari_diffinfinite.evaluation.evaluate import EvaluationSettings, evaluate
    from napari_diffinfinite.slide.store import SlideStore

    slide = demo_data.demo_slide()
    pixel = SlideStore.open(work / "cascade.zarr", mode="r").pixel_size_um
    rows = []
    for level in levels:
        for name in ("cascade", "single"):
            for seed in feature_seeds if features == "random" else (features,):
                extractor = f"random:{seed}" if features == "random" else features
                settings = EvaluationSettings(
                    tiles=256, tile_size=64, pixel_size=pixel * 2**level, features=extractor, device="cpu",
                    kid_subsets=50, kid_subset_size=100, patch_fid_crops=128, patch_max_scale=4.0,
                    seams=False, adherence=False,
                )  # fmt: skip
                metrics = evaluate([slide], [work / f"{name}.zarr"], settings=settings).metrics
                row = {
                    "level": level, "pixel_size_um": round(pixel * 2**level, 3), "slide": name, "features": seed,
                    "patch_fid": metrics["patch_fid"]["patch_fid"], "fid": metrics["quality"]["fid"],
                    "kid": metrics["quality"]["kid_mean"], "tiles_real": metrics["tiles"]["real"]["tiles"],
                    "tiles_synthetic": metrics["tiles"]["synthetic"]["tiles"],
                }  # fmt: skip
                print(json.dumps(row))
                rows.append(row)
    print(evaluation_table(rows))
    return {"rows": rows}


def evaluation_table(rows: list[dict]) -> str:
    """The rows as a markdown table: per level and metric, both slides, one value per feature seed."""
    names = " / ".join(str(f) for f in dict.fromkeys(r["features"] for r in rows))
    lines = [
        f"| level (um/px) | metric | cascade (features {names}) | single scale (features {names}) |",
        "|---|---|---|---|",
    ]
    for level in sorted({r["level"] for r in rows}):
        size = next(r["pixel_size_um"] for r in rows if r["level"] == level)
        for metric in ("patch_fid", "fid", "kid"):
            cells = [
                " / ".join(f"{r[metric]:.3g}" for r in rows if r["level"] == level and r["slide"] == slide)
                for slide in ("cascade", "single")
            ]
            lines.append(f"| {level} ({size:g}) | {metric} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
