"""``diffinfinite evaluate``: quality, privacy, seams and layout adherence of synthetic slides.

Thin front end over :func:`napari_diffinfinite.evaluation.evaluate.evaluate`; the report
(metrics.json, report.png, report.html, sample grids) is written by
:func:`napari_diffinfinite.evaluation.report.write_report`. See ``docs/evaluate.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._progress import TqdmProgress


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="compare synthetic slides with real ones (FID, KID, IS, precision/recall, Patch-FID, privacy, seams, layout)",
        description="Sample tiles reproducibly from a real and a synthetic set (slide stores, real slides, folders of "
        "tiles, or a mix), compute image-quality metrics on Inception-v3 (or another extractor's) features, "
        "optionally Patch-FID and privacy tests against the training set, and for synthetic slide stores their seam "
        "score and layout adherence. Writes metrics.json and a report with pictures into --out.",
    )
    p.add_argument("--real", nargs="+", required=True, type=Path, help="real slides, slide stores or tile folders")
    p.add_argument("--synthetic", nargs="+", required=True, type=Path, help="synthetic slide stores or tile folders")
    p.add_argument("--training", nargs="+", default=[], type=Path,
                   help="the model's training slides/tiles: enables authenticity (privacy)")  # fmt: skip
    p.add_argument("--held-out", nargs="+", default=[], type=Path,
                   help="real slides/tiles the model never saw: with --training, enables the C_T score")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    t = p.add_argument_group("tiles")
    t.add_argument("--tiles", type=int, default=256, help="tiles per set (default 256; use thousands for papers)")
    t.add_argument("--tile-size", type=int, default=256, help="tile side in pixels (default 256)")
    t.add_argument("--level", type=int, default=0, help="pyramid level to sample at (default 0 = full resolution)")
    t.add_argument("--pixel-size", default="auto", metavar="UM|auto|native",
                   help="compare every slide at this many microns per pixel, finer slides box-filtered down "
                   "(default auto: the coarsest slide's pixel size when they differ; native: as they are)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="seed of the tile positions and random subsets (default 0)")
    t.add_argument("--include-glass", action="store_true", help="also sample tiles that are mostly glass")
    t.add_argument("--min-tissue", type=float, default=0.5, help="least tissue fraction of a tile (default 0.5)")
    f = p.add_argument_group("features")
    f.add_argument("--features", default="inception",
                   help="inception (default), hf:FOLDER, timm:ARCH:WEIGHTS, torchscript:FILE or random[:SEED]")  # fmt: skip
    f.add_argument("--inception-weights", help="path of weights-inception-2015-12-05-6726825d.pth")
    f.add_argument("--trust-torchscript", action="store_true",
                   help="allow loading a TorchScript feature model (it runs the code inside the file)")  # fmt: skip
    f.add_argument("--feature-input-size", type=int, default=224, help="input size of hf/timm/TorchScript models")
    f.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when present)")
    f.add_argument("--batch-size", type=int, default=32, help="tiles per forward pass (default 32)")
    m = p.add_argument_group("metrics")
    m.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    m.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    m.add_argument("--pr-k", type=int, default=3, help="k of the k-NN manifolds of precision/recall (default 3)")
    m.add_argument(
        "--patch-fid", type=int, default=0, metavar="CROPS", help="Patch-FID with this many crops (default off)"
    )
    m.add_argument(
        "--patch-max-scale", type=float, default=8.0, help="largest Patch-FID crop, in tile sizes (default 8)"
    )
    m.add_argument("--ct-cells", type=int, default=5, help="k-means cells of the C_T test (default 5)")
    m.add_argument("--seam-period", type=int, action="append",
                   help="seam period in pixels: the patch size, the decode tile size (repeatable; default 128)")  # fmt: skip
    m.add_argument("--no-seams", action="store_true", help="skip the seam score")
    m.add_argument("--no-adherence", action="store_true", help="skip layout adherence")
    m.add_argument("--class-map", help="model class to heuristic class (glass, stroma, nuclei), e.g. "
                   "background=glass,dermis=stroma,epidermis=nuclei (default: glass vs tissue)")  # fmt: skip
    m.add_argument("--segmenter", default="he", help="'he' (built-in H&E heuristic) or package.module:callable")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from ..evaluation.adherence import parse_class_map
    from ..evaluation.evaluate import EvaluationSettings, evaluate
    from ..evaluation.report import summary_lines, write_report

    settings = EvaluationSettings(
        tiles=args.tiles, tile_size=args.tile_size, level=args.level, pixel_size=args.pixel_size, seed=args.seed,
        include_glass=args.include_glass, min_tissue=args.min_tissue, features=args.features,
        inception_weights=args.inception_weights, trust_torchscript=args.trust_torchscript,
        feature_input_size=args.feature_input_size, batch_size=args.batch_size, device=args.device,
        kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, pr_k=args.pr_k,
        patch_fid_crops=args.patch_fid, patch_max_scale=args.patch_max_scale, ct_cells=args.ct_cells,
        seams=not args.no_seams, seam_periods=tuple(args.seam_period or (128,)), adherence=not args.no_adherence,
        class_map=parse_class_map(args.class_map) if args.class_map else None, segmenter=args.segmenter,
    )  # fmt: skip
    from ..evaluation.report import check_report_folder

    check_report_folder(args.out, overwrite=args.overwrite)  # before the work, not after
    from ._signals import sigterm_as_interrupt

    progress = TqdmProgress(disable=args.quiet)
    with sigterm_as_interrupt():  # a half-written report folder is removed, as on Ctrl-C
        try:
            result = evaluate(
                args.real, args.synthetic, training=args.training, held_out=args.held_out, settings=settings,
                progress=progress,
            )  # fmt: skip
        finally:
            progress.close()
        files = write_report(result, args.out, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        print("\n".join(summary_lines(result.metrics)))
        print(f"report: {files['report_html']}  (metrics: {files['metrics']})")
    return 0
