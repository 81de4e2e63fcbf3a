"""Error messages worded for the window, not the command line (no Qt here).

Engine errors (:class:`~napari_diffinfinite.errors.DiffInfiniteError`) already say what is
wrong and how to fix it. Anything else would show as ``ValueError: ...`` or
``FileExistsError: [Errno 17] ...``; :func:`gui_message` words those for a person, and
the traceback goes to the log for a bug report.
"""

from __future__ import annotations

import errno
from pathlib import Path

from ..errors import DiffInfiniteError
from ..progress import Cancelled

_OS_ERRORS = {
    errno.EEXIST: "{path} already exists: choose another name or allow overwriting",
    errno.ENOENT: "{path} does not exist: check the path",
    errno.EACCES: "no permission to use {path}: choose a folder you can write to",
    errno.EPERM: "no permission to use {path}: choose a folder you can write to",
    errno.ENOSPC: "the disk is full while writing {path}: free space or choose another disk",
    errno.EISDIR: "{path} is a folder, not a file",
    errno.ENOTDIR: "{path} is not a folder",
}


def gui_message(exc: BaseException) -> str:
    """One sentence about ``exc`` for a notification or a status line."""
    if isinstance(exc, (DiffInfiniteError, Cancelled)):
        return str(exc)
    if isinstance(exc, OSError):
        path = exc.filename if exc.filename is not None else ""
        template = _OS_ERRORS.get(exc.errno or -1)
        if template is not None:
            return template.format(path=path or "the file")
        reason = exc.strerror or str(exc) or "input/output error"
        return f"{reason}: {path}" if path else str(reason)
    if isinstance(exc, MemoryError):
        return "not enough memory: choose a smaller slide, a smaller batch size or another device"
    text = str(exc).strip()
    if not text:
        return "an unexpected error occurred (details are in the log)"
    return text[0].upper() + text[1:]


def fresh_path(path: Path) -> Path:
    """``path`` if it does not exist, else the first free ``name-2.zarr``, ``name-3.zarr``...

    Multi-part suffixes (``.ome.tif``) are kept whole.
    """
    path = Path(path)
    if not path.exists():
        return path
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.endswith(".ome.tif") else path.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    k = 2
    while (candidate := path.with_name(f"{stem}-{k}{suffix}")).exists():
        k += 1
    return candidate
