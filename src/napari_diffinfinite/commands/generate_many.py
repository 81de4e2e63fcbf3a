"""``diffinfinite generate-many MANIFEST``: one slide per manifest row, on a dask cluster.

The manifest is a CSV file with a header or a JSON list of objects. Its columns are
``generate``'s options without the dashes (``out``, ``size``, ``seed``, ``steps``, ``omega``,
``label`` or ``mask``, ``model``, ``vae``, ``mask_model``, ...; ``-`` or ``_`` alike); a blank
cell takes the option's default, and flags (``keep_state``, ``overwrite``, ...) take
true/false. Every row is read by ``generate``'s own parser, so a row means exactly what the
same options mean on the ``generate`` command line. The whole manifest is checked before
anything runs: a malformed row (an unknown column, a value of the wrong type) stops it with
one message per bad row; a slide that fails later (a mask that does not fit its model) fails
alone and is listed in the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..engine import GenerateRequest
from ..errors import SettingsError
from . import generate
from ._progress import TqdmProgress

_TRUE, _FALSE = {"1", "true", "yes", "y", "on"}, {"", "0", "false", "no", "n", "off"}
#: generate options that make no sense per row of a manifest
_NOT_PER_ROW = {"quiet", "resume", "help", "nproc"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate-many",
        help="generate one slide per row of a manifest (CSV or JSON), on a dask cluster",
        description="Generate many slides in parallel with dask.distributed: a LocalCluster with one worker per GPU "
        "by default, or a running cluster with --scheduler. Each row is one 'generate' (columns = its options). "
        "Existing stores are resumed, so running the same manifest again finishes what was interrupted.",
    )
    p.add_argument("manifest", type=Path, help="CSV with a header, or a JSON list of objects; one slide per row")
    p.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786 (default: local)")
    p.add_argument("--workers", type=int, help="local workers (default: one per GPU, else 1)")
    p.add_argument("--retries", type=int, default=2, help="retries of a slide whose worker crashed (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


class _RowParser(argparse.ArgumentParser):
    """generate's parser, raising instead of exiting, so a bad row becomes a message."""

    def error(self, message: str):  # type: ignore[override]
        raise SettingsError(message)


def _generate_parser() -> argparse.ArgumentParser:
    parser = _RowParser(prog="diffinfinite", add_help=False)
    return generate.add_parser(parser.add_subparsers())


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Column name (dest) -> the option's action, for every long option of generate."""
    return {
        a.dest: a
        for a in parser._actions  # noqa: SLF001 - argparse has no public list of actions
        if a.option_strings and a.dest not in _NOT_PER_ROW
    }


def _row_argv(row: dict[str, Any], options: dict[str, argparse.Action]) -> list[str]:
    argv: list[str] = []
    for column, value in row.items():
        name = str(column).strip().lstrip("-").replace("-", "_")
        if name not in options:
            raise SettingsError(
                f"unknown column {column!r}; columns are generate's options: {', '.join(sorted(options))}"
            )
        action = options[name]
        text = "" if value is None else str(value).strip()
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a flag
            if text.lower() not in _TRUE | _FALSE:
                raise SettingsError(f"column {column!r} is a flag: true or false, got {text!r}")
            if text.lower() in _TRUE:
                argv.append(flag)
        elif text:
            argv += [flag, text]
    return argv


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts: a CSV with a header (by suffix ``.csv``) or a JSON list of objects."""
    if not path.is_file():
        raise SettingsError(f"manifest {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise SettingsError(f"manifest {path} is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SettingsError(f"manifest {path} must be a JSON list of objects, one per slide")
        return rows
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SettingsError(f"manifest {path} is not a UTF-8 CSV file with a header row: {str(exc)[:200]}") from None
    if rows and None in rows[0]:
        raise SettingsError(f"manifest {path}: a row has more cells than the header has columns")
    return rows


def read_manifest(path: str | Path) -> list[GenerateRequest]:
    """The manifest's rows as engine requests; SettingsError listing every malformed row.

    Relative paths (out, mask, model, vae, mask_model) are made absolute against the manifest's folder,
    so that workers on other machines find them (given a shared file system).
    """
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise SettingsError(f"manifest {path} has no rows; give one row per slide")
    parser = _generate_parser()
    options = _options(parser)
    requests, errors = [], []
    seen: dict[Path, int] = {}
    for number, row in enumerate(rows, start=1):
        try:
            args = parser.parse_args(_row_argv(row, options))
            for name in ("out", "mask", "model", "vae", "mask_model"):
                value = getattr(args, name)
                if value is not None and str(value) != "default" and not Path(value).expanduser().is_absolute():
                    setattr(args, name, type(value)(path.resolve().parent / value))
            for name in ("pipeline", "controlnet", "lora"):  # folders or files; else a hub id in the cache
                value = getattr(args, name)
                if value is not None and (path.resolve().parent / value).exists():
                    setattr(args, name, str(path.resolve().parent / value))
            args.resume = False
            request = generate.request_from_args(args)
            first = seen.setdefault(Path(os.path.abspath(request.path)), number)
            if first != number:  # two slides into one store: one would fail (or overwrite) at run time
                raise SettingsError(f"out {request.path} is also row {first}'s; give every slide its own store")
            requests.append(request)
        except SettingsError as exc:
            errors.append(f"row {number}: {exc}")
    if errors:
        raise SettingsError(f"manifest {path} has {len(errors)} bad row(s), nothing was run:\n  " + "\n  ".join(errors))
    return requests


def run(args: argparse.Namespace) -> int:
    from ..fleet import generate_many

    requests = read_manifest(args.manifest)
    progress = TqdmProgress(disable=args.quiet)
    try:
        result = generate_many(requests, scheduler=args.scheduler, workers=args.workers, retries=args.retries,
                               progress=progress)  # fmt: skip
    finally:
        progress.close()
    print(result.summary(), file=sys.stdout)
    return 0 if not result.failed else 1
