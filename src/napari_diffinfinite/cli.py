"""``diffinfinite``: the command-line front end over the engine.

Each subcommand lives in :mod:`napari_diffinfinite.commands` as a module with
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import DiffInfiniteError
from .progress import Cancelled

COMMANDS = ("generate", "info", "convert", "export", "train", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffinfinite",
        description="Synthetic whole-slide images with DiffInfinite (parallel random-patch diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"napari-diffinfinite {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__):
                continue  # optional command not installed in this build
            raise
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except Cancelled as exc:
        print(f"diffinfinite: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("diffinfinite: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    except (DiffInfiniteError, ValueError, FileNotFoundError) as exc:
        print(f"diffinfinite: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
