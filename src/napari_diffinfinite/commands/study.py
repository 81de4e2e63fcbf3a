"""``diffinfinite study``: the blinded reader study without a GUI.

``study export`` draws real and synthetic tiles into an anonymous, shuffled study folder
(for the napari widget, or to send to readers); ``study score`` scores an answers CSV
(accuracy with a binomial confidence interval, confusion table, realism).
The logic is in :mod:`napari_diffinfinite.evaluation.study`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study",
        help="blinded real-vs-synthetic reader study: export the tile set, score the answers",
        description="Export a blinded study folder of real and synthetic tiles (shown one at a time by the napari "
        "'Reader study' widget), or score a reader's answers CSV.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="draw tiles into a shuffled, anonymous study folder")
    e.add_argument("--real", nargs="+", required=True, type=Path, help="real slides, slide stores or tile folders")
    e.add_argument("--synthetic", nargs="+", required=True, type=Path, help="synthetic slide stores or tile folders")
    e.add_argument("--out", required=True, type=Path, help="study folder to write")
    e.add_argument("--tiles", type=int, default=20, help="tiles per source set (default 20)")
    e.add_argument("--tile-size", type=int, default=256, help="tile side in pixels (default 256)")
    e.add_argument("--level", type=int, default=0, help="pyramid level (default 0)")
    e.add_argument("--seed", type=int, default=0, help="seed of tile positions and order (default 0)")
    e.add_argument("--include-glass", action="store_true", help="also draw tiles that are mostly glass")
    e.add_argument("--overwrite", action="store_true", help="replace an existing study folder")
    s = sub.add_parser("score", help="accuracy, binomial CI and confusion table of an answers CSV")
    s.add_argument("study", type=Path, help="the study folder")
    s.add_argument("--answers", required=True, type=Path, help="answers CSV written by the widget")
    s.add_argument("--key", type=Path, help="key CSV, if moved out of the study folder")
    s.add_argument("--reader", help="score only this reader (default: all)")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from ..evaluation.study import build_study, load_study, score_answers

    if args.action == "export":
        from ._signals import sigterm_as_interrupt

        with sigterm_as_interrupt():  # the half-written study folder is removed
            study = build_study(
                args.real, args.synthetic, args.out, tiles_per_source=args.tiles, size=args.tile_size,
                level=args.level, seed=args.seed, include_glass=args.include_glass, overwrite=args.overwrite,
            )  # fmt: skip
        counts = {k: list(study.key.values()).count(k) for k in ("real", "synthetic")}
        print(
            f"study folder {study.folder}: {len(study)} tiles ({counts['real']} real, {counts['synthetic']} synthetic)"
        )
        return 0
    score = score_answers(load_study(args.study, args.key), args.answers, reader=args.reader)
    print(json.dumps(score.to_dict(), indent=2) if args.json else "\n".join(score.lines()))
    return 0
