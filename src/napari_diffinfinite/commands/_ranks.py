"""``generate --nproc N``: the same command run as N torch.distributed ranks on this machine."""

from __future__ import annotations

import argparse

from ..distributed_slide import TILE
from . import generate


def generate_argv(args: argparse.Namespace) -> list[str]:
    """The ``generate`` command line that ``args`` came from, without ``--nproc`` (what each rank runs)."""
    parser = generate.add_parser(argparse.ArgumentParser(add_help=False).add_subparsers())
    argv = ["generate"]
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        if not action.option_strings or action.dest in ("help", "nproc"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value is False or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        argv += [flag] if action.nargs == 0 else [flag, str(value)]
    return argv


def run_ranks(args: argparse.Namespace) -> int:
    """Launch ``args.nproc`` ranks of this ``generate`` (torchrun's elastic launcher) and wait for them.

    The request is validated here first, so that a user error is reported once rather than by
    every rank of every restart.
    """
    from .. import engine
    from ..distributed_slide import launch
    from ..errors import SettingsError

    if args.nproc < 1:
        raise SettingsError(f"--nproc must be at least 1, got {args.nproc}")
    request = generate.request_from_args(args)
    engine.validate(request)
    if request.size is not None and -(-request.size[0] // TILE) < args.nproc:
        rows = -(-request.size[0] // TILE)
        raise SettingsError(
            f"a slide {request.size[0]} px tall has {rows} row(s) of {TILE}-px tiles, too few for {args.nproc} "
            f"processes (each takes whole tile rows); use --nproc {rows} or fewer"
        )
    launch(generate_argv(args), args.nproc)
    return 0
