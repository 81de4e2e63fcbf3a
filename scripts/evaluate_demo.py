#!/usr/bin/env python
"""Measure how well the embedded demo models follow a layout: ``python scripts/evaluate_demo.py``.

Image model (``--image-model``, default: the embedded one), for each test layout at the
model's 2 um/px:

* ``training``: the training slide's own derived label map (555 x 741 px), next to the real slide;
* ``disc``: a disc of epidermis (radius 240 px) in dermis, 768 x 768 px (held out);
* ``band``: dermis, a 256 px band of glass, epidermis, 768 x 768 px (held out);
* ``checkerboard``: 512 px squares of dermis, glass, glass, epidermis, 1024 x 1024 px (held out).

Each synthetic image is segmented by the built-in H&E heuristic
(:class:`napari_diffinfinite.evaluation.adherence.HESegmenter`, classes glass / stroma / nuclei;
the demo's background / dermis / epidermis map onto them) and compared with its layout:
per-class IoU and Dice, mean IoU. Also: the mean luminance of the pixels painted as glass
(8 px away from other classes) against the real slide's glass, and the seam score at the
patch size (:mod:`napari_diffinfinite.evaluation.seams`) with the layout: the gradients within 8 px
of its class borders left out (drawn on purpose; in the band and checkerboard they lie on multiples of
the period) and each class's gradients divided by their mean (glass is flat, tissue is not).

Mask model (``--mask-model``): layouts for a 2048 x 2048 slide (``--layout-size``) under condition 1
("tissue", the CLI default) and 0 ("any"), after the sampler's clean-up: the fraction that is
"unknown" and the class fractions, against the windows of the training layout the mask model
learnt from (and those windows put through the same clean-up: the floor of the "unknown" fraction
at the model's resolution).

Writes ``WORK/evaluation.json`` (default ``build/demo-eval``) and, unless ``--no-images``,
``docs/images/demo-side-by-side.png`` (layout | generated | real slide or segmentation) and
``docs/images/demo-layouts.png``. ``--omega 1 3 5`` evaluates several guidance strengths
(to tune it on a held-out layout, e.g. ``--layouts disc``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_diffinfinite import engine
from napari_diffinfinite.demo import DEMO_CLASS_COLORS, DEMO_CLASS_NAMES
from napari_diffinfinite.evaluation.adherence import HESegmenter, layout_adherence, named_mapping
from napari_diffinfinite.evaluation.seams import seam_score
from napari_diffinfinite.sampling.mask_sampler import clean_mask
from napari_diffinfinite.slide.masks import CanvasMask
from napari_diffinfinite.training import demo_data
from napari_diffinfinite.training.previews import colour_labels
from napari_diffinfinite.training.trainer import SETTINGS_NAME

REPO = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO / "docs" / "images"
BACKGROUND, DERMIS, EPIDERMIS = demo_data.BACKGROUND, demo_data.DERMIS, demo_data.EPIDERMIS
CLASS_MAP = {"background": "glass", "dermis": "stroma", "epidermis": "nuclei"}
SEGMENTATION_COLORS = [DEMO_CLASS_COLORS[BACKGROUND], DEMO_CLASS_COLORS[DERMIS], DEMO_CLASS_COLORS[EPIDERMIS]]
LAYOUTS = ("training", "disc", "band", "checkerboard")
GLASS_MARGIN_PX = 8
LUMA = np.array([0.299, 0.587, 0.114])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-model", help="image model folder (default: the embedded demo model)")
    p.add_argument("--mask-model", help="mask model folder (default: the embedded demo model)")
    p.add_argument("--work", type=Path, default=REPO / "build" / "demo-eval", help="output folder")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument(
        "--omega", type=float, nargs="+", help="guidance strength(s) (default: the model's default_omega, else 3)"
    )
    p.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    p.add_argument("--size", type=int, default=768, help="side of the disc and band layouts (px)")
    p.add_argument("--checker-square", type=int, default=512, help="side of a checkerboard square (px)")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="WORK",
        help="combine the results of runs in these folders (e.g. layouts run in parallel) into --work",
    )
    p.add_argument("--mask-steps", type=int, help="DDIM steps of the mask model (default: the model's)")
    p.add_argument("--mask-omega", type=float, default=0.0,
                   help="guidance of the mask model (default 0, as `diffinfinite generate`)")  # fmt: skip
    p.add_argument("--layout-smoothing-um", type=float,
                   help="smoothing of the training layout the mask model learnt (default: as train_demo.py recorded"
                        f" it with the model, else {demo_data.LAYOUT_SMOOTHING_UM:g})")  # fmt: skip
    p.add_argument("--layout-size", type=int, default=2048, help="side of the slide the mask model lays out (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--skip-image", action="store_true", help="evaluate the mask model only")
    p.add_argument("--skip-mask", action="store_true", help="evaluate the image model only")
    p.add_argument("--no-images", action="store_true", help="do not write docs/images")
    return p.parse_args(argv)


def disc_layout(size: int = 768) -> np.ndarray:
    radius = round(size * 5 / 16)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2
    return np.where(inside, EPIDERMIS, DERMIS).astype(np.uint8)


def band_layout(size: int = 768) -> np.ndarray:
    band = size // 3
    layout = np.full((size, size), DERMIS, np.uint8)
    top = (size - band) // 2
    layout[top : top + band] = BACKGROUND
    layout[top + band :] = EPIDERMIS
    return layout


def checkerboard_layout(square: int = 512) -> np.ndarray:
    blocks = np.array([[DERMIS, BACKGROUND], [BACKGROUND, EPIDERMIS]], np.uint8)
    return np.kron(blocks, np.ones((square, square), np.uint8))


def test_layouts(
    names: list[str], size: int = 768, square: int = 512
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """name -> (layout, real image or None)."""
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if "training" in names:
        rgb, pixel_size = demo_data.read_slide_rgb(demo_data.demo_slide(), demo_data.DEMO_DOWNSAMPLE)
        out["training"] = (demo_data.derive_labels(rgb, pixel_size).labels, rgb)
    makers = {"disc": lambda: disc_layout(size), "band": lambda: band_layout(size),
              "checkerboard": lambda: checkerboard_layout(square)}  # fmt: skip
    for name in names:
        if name in makers:
            out[name] = (makers[name](), None)
    return out


def glass_luminance(image: np.ndarray, layout: np.ndarray) -> float | None:
    """Mean luminance (grey levels) of the pixels laid out as glass, away from other classes."""
    glass = ndimage.binary_erosion(layout == BACKGROUND, iterations=GLASS_MARGIN_PX, border_value=1)
    return round(float((image[glass].astype(np.float64) @ LUMA).mean()), 1) if glass.any() else None


def generate(model, codec, layout: np.ndarray, work: Path, omega: float, steps: int | None, seed: int):
    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(dir=work)) / "eval.zarr"
    store = engine.generate_slide(
        out, layout.shape, image_model=model, codec=codec, mask=CanvasMask(layout, layout.shape),
        settings=engine.GenerateSettings(steps=steps, omega=omega, seed=seed, device="cpu"), overwrite=True,
    )  # fmt: skip
    image = store.read_region(0, 0, layout.shape[0], 0, layout.shape[1])
    shutil.rmtree(out.parent, ignore_errors=True)
    return image, time.perf_counter() - started


def evaluate_image_model(args: argparse.Namespace) -> tuple[dict, dict]:
    model = engine.load_image_model(args.image_model)
    codec = engine.load_codec(None, model)
    mapping = named_mapping(model.config.class_names, CLASS_MAP)
    segmenter = HESegmenter()
    layouts = test_layouts(args.layouts, args.size, args.checker_square)
    real_glass = None
    if "training" in layouts:
        layout, rgb = layouts["training"]
        real_glass = glass_luminance(rgb, layout)
    results: dict = {"model": model.source, "real_glass_luminance": real_glass, "layouts": {}}
    pictures: dict = {}
    omegas = args.omega or [model.config.default_omega if model.config.default_omega is not None else 3.0]
    for omega in omegas:
        for name, (layout, real) in layouts.items():
            image, seconds = generate(model, codec, layout, args.work, omega, args.steps, args.seed)
            segmentation = segmenter(image)
            adherence = layout_adherence(layout, segmentation, mapping)
            row = {
                "omega": omega, "size": list(layout.shape), **adherence.to_dict(),
                "glass_luminance": glass_luminance(image, layout),
                # the layout's class borders are drawn on purpose (and lie on multiples of the
                # period in the band and checkerboard): left out, as `diffinfinite evaluate` does
                "seam_score": round(
                    seam_score(image, period=model.config.patch_size, labels=layout).score, 4
                ),
                "seconds": round(seconds, 1),
            }  # fmt: skip
            row.pop("confusion", None)
            results["layouts"][f"{name}@omega{omega:g}"] = row
            print(f"{name} omega {omega:g}: mean IoU {row['mean_iou']}, IoU {row['iou']}, glass {row['glass_luminance']}"
                  f" (real {real_glass}), seams {row['seam_score']}, {seconds:.0f} s", flush=True)  # fmt: skip
            Image.fromarray(image).save(args.work / f"{name}-omega{omega:g}.png")
            if omega == omegas[0]:
                pictures[name] = (
                    layout,
                    image,
                    real if real is not None else colour_labels(segmentation, SEGMENTATION_COLORS),
                )
    return results, pictures


def training_windows(
    labels: np.ndarray, window: int, stride: int, min_tissue: float, counted: np.ndarray | None = None
) -> np.ndarray:
    """Class pixel counts over the windows of ``labels`` with at least ``min_tissue`` tissue
    (counted in ``counted``, the same windows of another label map, if given)."""
    counted = labels if counted is None else counted
    counts = np.zeros(len(DEMO_CLASS_NAMES), np.int64)
    for y in range(0, labels.shape[0] - window + 1, stride):
        for x in range(0, labels.shape[1] - window + 1, stride):
            if (labels[y : y + window, x : x + window] != BACKGROUND).mean() >= min_tissue:
                counts += np.bincount(counted[y : y + window, x : x + window].ravel(), minlength=len(counts))
    return counts


def known_fractions(counts: np.ndarray) -> dict[str, float]:
    """Class fractions of the pixels that are not "unknown"."""
    total = int(counts[1:].sum())
    return {n: round(int(c) / total, 3) if total else None for n, c in zip(DEMO_CLASS_NAMES[1:], counts[1:])}


def fractions(counts: np.ndarray) -> dict[str, float]:
    total = int(counts.sum())
    return {n: round(int(c) / total, 3) if total else None for n, c in zip(DEMO_CLASS_NAMES, counts)}


def recorded_training_data(model, key: str) -> float | None:
    """A figure of the data a mask model learnt (``key``: ``layout_smoothing_um``, ...), as
    train_demo.py recorded it: in an installed model's config, or in ``train-settings.json``
    next to a run's model folder (or its checkpoint's)."""
    data = (model.config.extra or {}).get("training", {}).get("data", {})
    for folder in (Path(model.source).parent, Path(model.source).parent.parent):
        settings = folder / SETTINGS_NAME
        if key not in data and settings.is_file():
            data = json.loads(settings.read_text()).get("data", {})
    value = data.get(key)
    return None if value is None else float(value)


def evaluate_mask_model(args: argparse.Namespace) -> tuple[dict, dict]:
    model = engine.load_mask_model(args.mask_model)
    codec = engine.load_codec(None, model)
    # the windows the model is compared with must be smoothed as its training layouts were
    smoothing = args.layout_smoothing_um
    if smoothing is None:
        recorded = recorded_training_data(model, "layout_smoothing_um")
        smoothing = demo_data.LAYOUT_SMOOTHING_UM if recorded is None else recorded
    print(f"training layouts smoothed at {smoothing:g} um", flush=True)
    rgb, pixel_size = demo_data.read_slide_rgb(demo_data.demo_slide(), demo_data.DEMO_DOWNSAMPLE)
    smooth = demo_data.smooth_layout(demo_data.derive_labels(rgb, pixel_size).labels, pixel_size, smoothing)
    # the training layout at the resolution of the sampled canvas (finer than the model's own by
    # layout_upsample), in windows of the model's field of view
    f = model.config.layout_upsample
    d = model.config.mask_downsample // f
    small = smooth[d // 2 :: d, d // 2 :: d]
    window, stride = model.config.patch_size * f, 8 * f
    # condition 1 ("tissue") was given to windows with at least this much tissue (0.1: any window trained on)
    tissue = recorded_training_data(model, "tissue_condition_min_fraction") or 0.5
    reference = {
        0: fractions(training_windows(small, window, stride, 0.1)),
        1: fractions(training_windows(small, window, stride, tissue)),
    }
    # the same windows put through the sampler's clean-up: what a model that drew them exactly would score
    cleaned = clean_mask(small)
    reference_cleaned = {
        c: {"unknown": fractions(counts)["unknown"], "fractions_of_known": known_fractions(counts)}
        for c, counts in (
            (0, training_windows(small, window, stride, 0.1, cleaned)),
            (1, training_windows(small, window, stride, tissue, cleaned)),
        )
    }
    side = args.layout_size
    results: dict = {"model": model.source, "size": f"{side}x{side}", "tissue_condition_min_fraction": tissue, "steps": args.mask_steps or model.config.sampling_steps,
                     "omega": args.mask_omega, "layout_smoothing_um": smoothing, "conditions": {}}  # fmt: skip
    pictures = {}
    for condition in (1, 0):
        started = time.perf_counter()
        canvas = engine.sample_layout(
            model,
            codec,
            (side, side),
            condition=condition,
            seed=args.seed,
            steps=args.mask_steps,
            omega=args.mask_omega,
        )
        seconds = time.perf_counter() - started
        sampled = fractions(np.bincount(canvas.ravel(), minlength=len(DEMO_CLASS_NAMES)))
        known = {n: round(v / max(1e-9, 1 - sampled["unknown"]), 3) for n, v in sampled.items() if n != "unknown"}
        ref = reference[condition]
        difference = None if ref["background"] is None else round(100 * max(abs(known[n] - ref[n]) for n in known), 1)
        results["conditions"][str(condition)] = {
            "unknown": sampled["unknown"], "fractions": sampled, "fractions_of_known": known,
            "training_fractions": ref,
            "training_windows_cleaned": reference_cleaned[condition],
            "max_difference_points": difference,
            "seconds": round(seconds, 1),
        }  # fmt: skip
        print(f"layout condition {condition}: {results['conditions'][str(condition)]}", flush=True)
        pictures[condition] = canvas
    pictures["training"] = small
    return results, pictures


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    resample = Image.Resampling.NEAREST if image.ndim == 2 else Image.Resampling.LANCZOS
    out = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(out.convert("RGB"), ((side - out.width) // 2, (side - out.height) // 2))
    return np.asarray(canvas)


def _captioned(rows: list[list[np.ndarray]], captions: list[str], side: int) -> Image.Image:
    gap = 8
    header = 22
    width = len(rows[0]) * (side + gap) - gap
    sheet = Image.new("RGB", (width, header + len(rows) * (side + gap) - gap), "white")
    draw = ImageDraw.Draw(sheet)
    for i, caption in enumerate(captions):
        draw.text((i * (side + gap) + 4, 4), caption, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet.paste(Image.fromarray(panel), (c * (side + gap), header + r * (side + gap)))
    return sheet


def write_pictures(image_pictures: dict, mask_pictures: dict) -> None:
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    side = 300
    if image_pictures:
        rows = [[_fit(colour_labels(layout, DEMO_CLASS_COLORS), side), _fit(image, side), _fit(third, side)]
                for layout, image, third in image_pictures.values()]  # fmt: skip
        captions = ["layout", "generated", "real slide (first row) / segmentation of generated"]
        _captioned(rows, captions, side).save(DOCS_IMAGES / "demo-side-by-side.png")
    if mask_pictures:
        panels = [_fit(colour_labels(mask_pictures[k], DEMO_CLASS_COLORS), side) for k in ("training", 1, 0)]
        captions = ["training layout (smoothed)", "sampled: condition 1 (tissue)", "sampled: condition 0 (any)"]
        _captioned([panels], captions, side).save(DOCS_IMAGES / "demo-layouts.png")


def save_pictures(path: Path, image_pictures: dict, mask_pictures: dict) -> None:
    arrays = {f"image:{name}:{i}": a for name, parts in image_pictures.items() for i, a in enumerate(parts)}
    arrays.update({f"mask:{key}": a for key, a in mask_pictures.items()})
    np.savez_compressed(path, **arrays)


def merge(folders: list[Path]) -> tuple[dict, dict, dict]:
    """One report and one set of pictures from runs in several folders (later folders win)."""
    report: dict = {}
    image_pictures: dict = {}
    mask_pictures: dict = {}
    for folder in folders:
        part = json.loads((folder / "evaluation.json").read_text())
        if "image" in part:
            layouts = {**report.get("image", {}).get("layouts", {}), **part["image"]["layouts"]}
            real = part["image"].get("real_glass_luminance") or report.get("image", {}).get("real_glass_luminance")
            report["image"] = {**part["image"], "layouts": layouts, "real_glass_luminance": real}
        if "mask" in part:
            report["mask"] = part["mask"]
        with np.load(folder / "pictures.npz") as arrays:
            for key in arrays.files:
                kind, _, rest = key.partition(":")
                if kind == "image":
                    name, index = rest.rsplit(":", 1)
                    image_pictures.setdefault(name, [None, None, None])[int(index)] = arrays[key]
                else:
                    mask_pictures[int(rest) if rest.isdigit() else rest] = arrays[key]
    ordered = {name: tuple(image_pictures[name]) for name in LAYOUTS if name in image_pictures}
    return report, ordered, mask_pictures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    image_pictures: dict = {}
    mask_pictures: dict = {}
    if not args.skip_image and not args.merge:
        report["image"], image_pictures = evaluate_image_model(args)
    if not args.skip_mask and not args.merge:
        report["mask"], mask_pictures = evaluate_mask_model(args)
    report["threads"] = torch.get_num_threads()
    if args.merge:
        report, image_pictures, mask_pictures = merge(args.merge)
    else:
        save_pictures(args.work / "pictures.npz", image_pictures, mask_pictures)
    (args.work / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_images:
        write_pictures(image_pictures, mask_pictures)
    print(f"report: {args.work / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
