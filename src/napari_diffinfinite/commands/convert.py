"""``diffinfinite convert``: an official ``model-N.pt`` to our safetensors folder format.

The converted configuration goes through the same validation as every loaded model before
anything is written; ``--overwrite`` replaces only a model folder this tool wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError
from ..model.pretrained import convert_official, load_model


def _colors(text: str) -> list[tuple[int, ...]]:
    """``R,G,B;R,G,B;...`` as integer triples (ranges are checked with the rest of the config)."""
    colors = []
    for item in text.split(";"):
        try:
            parts = tuple(int(v) for v in item.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3:
            raise CheckpointError(
                f"--class-colors: {item.strip()!r} is not a colour; give R,G,B (three integers 0-255) per class, "
                "separated by semicolons, label 0 first"
            )
        colors.append(parts)
    return colors


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert an official DiffInfinite checkpoint (model-N.pt) to config.json + model.safetensors",
        description="Reads the EMA weights without executing pickled code and writes our model folder.",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument("--class-names", help="comma-separated class names, label 0 first (e.g. unknown,tumour,stroma,...)")
    p.add_argument("--class-colors", help="semicolon-separated R,G,B colours, label 0 first")
    p.add_argument("--pixel-size", type=float, help="pixel size in micrometres the model was trained at")
    p.add_argument("--num-labels", type=int, help="label levels of a mask model (5 or 10)")
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    colors = _colors(args.class_colors) if args.class_colors else None
    out = convert_official(
        args.checkpoint, args.out, class_names=names, class_colors=colors, pixel_size_um=args.pixel_size,
        num_labels=args.num_labels, overwrite=args.overwrite,
    )  # fmt: skip
    model = load_model(out)
    print(
        f"wrote {out}: {model.config.kind} model, {model.num_parameters:,} parameters, classes {model.config.class_names}"
    )
    return 0
