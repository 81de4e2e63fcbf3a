"""``diffinfinite``: the command-line front end over the engine.

Each subcommand lives in :mod:`napari_diffinfinite.commands` as a module with
``add_parser(subparsers)`` and ``run(args) -> int``.

Exit codes, and what is printed on stderr:

* 0: done.
* 1: the command was refused or failed for a reason the user can fix (a bad setting, file,
  model or disk): exactly one line ``diffinfinite: error: <what is wrong and how to fix it>``.
* 2: the command line itself is wrong (unknown option, a value of the wrong type): one
  ``diffinfinite: error: ...`` line too, as argparse's own convention.
* 70: an internal error (a bug): ``diffinfinite: error: internal error: <summary>; run with
  -v for the traceback`` (``-v`` prints it).
* 130: interrupted (Ctrl-C, SIGTERM); the command says what was kept.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback

from . import __version__
from .errors import DiffInfiniteError
from .progress import Cancelled

COMMANDS = ("generate", "generate_many", "info", "convert", "export", "train", "bench", "evaluate", "study")
EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 70, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command killed by it

#: Optional dependencies and the extra that installs them.
OPTIONAL_EXTRAS = {"openslide": "slides", "napari": "gui", "qtpy": "gui", "magicgui": "gui", "PyQt6": "gui"}

_OS_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "the file name is too long",
}


class UsageError(Exception):
    """A command line argparse refused (raised instead of argparse's print-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffinfinite",
        description="Synthetic whole-slide images with DiffInfinite (parallel random-patch diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"napari-diffinfinite {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details; tracebacks of internal errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        sub = module.add_parser(subparsers)
        if not any("--verbose" in a.option_strings for a in sub._actions):
            sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log details; tracebacks of internal errors")  # fmt: skip
        sub.set_defaults(run=module.run)
    return parser


def _error(message: str) -> None:
    print(f"diffinfinite: error: {' '.join(str(message).split())}", file=sys.stderr)


def _os_error(exc: OSError, disk_full_fix: str | None = None) -> str:
    what = _OS_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = f" {disk_full_fix or 'free some space and run the command again'}" if full else ""
    return f"{what}{where};{fix or ' check the path and its permissions'}"


def main(argv: list[str] | None = None) -> int:
    """The ``diffinfinite`` command; returns its exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command's modules import (seconds, torch among them)
        print("diffinfinite: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `diffinfinite info X | head -1`: the reader went away; not our error
        # Python would report the broken pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except (Cancelled, KeyboardInterrupt):
        print(f"diffinfinite: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DiffInfiniteError as exc:
        _error(exc)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in OPTIONAL_EXTRAS:
            _error(
                f"this needs {top}, which is not installed: pip install 'napari-diffinfinite[{OPTIONAL_EXTRAS[top]}]'"
            )
            return EXIT_ERROR
        return _internal(exc, verbose)
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.errno in _OS_ERRORS:
            _error(_os_error(exc, getattr(args, "disk_full_fix", None)))
            return EXIT_ERROR
        return _internal(exc, verbose)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: say so in one line
        return _internal(exc, verbose)


def _internal(exc: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(exc)
    summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(summary) > 300:
        summary = summary[:297] + "..."
    hint = "the traceback is above; please report it" if verbose else "run with -v for the traceback"
    _error(f"internal error: {summary}; {hint}")
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
