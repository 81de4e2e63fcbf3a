"""``diffinfinite export``: a slide store (or a region of it) as OME-Zarr, TIFF or GeoJSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ExportError
from ..slide.export import FORMATS, NGFF_VERSIONS, export_slide, parse_region
from ..slide.export_tiff import COMPRESSIONS

_SUFFIXES = {"ome-zarr": ".zarr", "ome-tiff": ".ome.tif", "tiff": ".tif", "geojson": ".geojson"}


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        return parse_region(text)
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a slide store or a region of it (OME-Zarr, OME-TIFF, OpenSlide TIFF, GeoJSON)",
        description=(
            "ome-zarr: image + label pyramids (NGFF 0.4 for QuPath, or 0.5); "
            "ome-tiff: pyramidal OME-TIFF with SubIFDs (QuPath/Bio-Formats) + NAME.labels.ome.tif; "
            "tiff: tiled TIFF with every level a page (OpenSlide) + NAME.labels.tif; "
            "geojson: labels as QuPath annotations. Nothing is left at OUT if the export fails."
        ),
    )
    p.add_argument("slide", type=Path, help="slide store (.zarr folder)")
    p.add_argument("out", type=Path, help="output path (suffix suggestion: " + ", ".join(
        f"{k} {v}" for k, v in _SUFFIXES.items()) + ")")  # fmt: skip
    p.add_argument("--format", "-f", choices=FORMATS, help="default: from the suffix of OUT")
    p.add_argument(
        "--region", type=_region, metavar="X,Y,W,H",
        help="level-0 pixels: left, top, width, height (default: the whole slide)",
    )  # fmt: skip
    p.add_argument("--ngff-version", choices=NGFF_VERSIONS, default="0.4", help="OME-Zarr version (default 0.4)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="jpeg", help="TIFF image tiles (labels: always zlib)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(interrupted="interrupted; nothing was written at the output path (run the export again)")
    return p


def format_from_suffix(out: Path) -> str | None:
    name = out.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith((".zarr", ".ome.zarr")):
        return "ome-zarr"
    if name.endswith((".geojson", ".json")):
        return "geojson"
    return None


def run(args: argparse.Namespace) -> int:
    from ._progress import TqdmProgress
    from ._signals import cancel_on_signals

    fmt = args.format or format_from_suffix(args.out)
    if fmt is None:
        raise ExportError(f"cannot tell the format from {args.out.name!r}; pass --format ({', '.join(FORMATS)})")
    bar = TqdmProgress(disable=args.quiet)
    try:
        # SIGTERM (a scheduler's or `timeout`'s stop) cancels like Ctrl-C, so the temporary
        # files are removed; without a handler SIGTERM ended the process with them left behind
        with cancel_on_signals() as token:
            result = export_slide(
                args.slide, args.out, fmt, args.region,
                ngff_version=args.ngff_version, compression=args.compression, quality=args.quality,
                overwrite=args.overwrite, progress=bar, cancel=token,
            )  # fmt: skip
    finally:
        bar.close()
    x, y, w, h = result.region
    for path in result.files:
        print(f"wrote {path}")
    print(f"{fmt}: region x={x} y={y} {w}x{h} px, {result.num_levels} level(s)")
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    return 0
