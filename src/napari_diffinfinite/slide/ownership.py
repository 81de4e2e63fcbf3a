"""What ``overwrite=True`` may delete: only slide stores and exports this tool wrote.

A path is replaced only when it is recognisably ours:

- a **slide store**: a folder whose root zarr attributes hold our provenance
  (``diffinfinite.software == "napari-diffinfinite"``, no ``export`` record) and whose top level
  holds nothing but what a store holds (zarr metadata, level folders ``0``, ``1``, ...,
  ``labels``, ``OME``, ``diffinfinite``, zarr's ``*.partial`` leftovers);
- an **OME-Zarr export**: the same, with the ``export`` record and without ``diffinfinite/``;
- a **TIFF export**: a TIFF whose first page's Software tag is ``napari-diffinfinite``;
- a **GeoJSON export**: a JSON object with our provenance (with its ``export`` record).

Anything else (a folder with a zarr group and a user's ``thesis.tex``, a plain folder, a file
we did not write, a symbolic link, or a store holding a link anywhere inside) is refused with
a message. Links are never followed: a link could point out of the target.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import ExportError, StoreError
from .constants import LOCK_FILE, OME_DIR, PROVENANCE_KEY, SOFTWARE, STATE_DIR

__all__ = [
    "zarr_root_attrs",
    "is_our_store",
    "check_replaceable_store",
    "check_replaceable_export",
    "remove_store_contents",
]

_ZARR_FILES = {".zgroup", ".zattrs", "zarr.json", ".zmetadata"}
_LEVEL = re.compile(r"^\d+$")


def zarr_root_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes of a zarr group folder (format 2 or 3), or None if it is not one."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        file = path / name
        if file.is_file() and not file.is_symlink():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if key is not None:
                data = data.get(key, {}) if isinstance(data, dict) else None
            return data if isinstance(data, dict) else None
    return None


def _provenance(path: Path) -> dict[str, Any] | None:
    attrs = zarr_root_attrs(path)
    record = attrs.get(PROVENANCE_KEY) if attrs else None
    return record if isinstance(record, dict) and record.get("software") == SOFTWARE else None


def _foreign_entries(path: Path, allowed_dirs: set[str]) -> list[str]:
    """Top-level names a store/export of ours never holds."""
    foreign = []
    for entry in os.scandir(path):
        name = entry.name
        if entry.is_symlink():
            foreign.append(f"{name} (a symbolic link)")
        elif entry.is_dir(follow_symlinks=False):
            if not (_LEVEL.match(name) or name in allowed_dirs):
                foreign.append(name)
        elif not (name in _ZARR_FILES or name.endswith(".partial")):
            foreign.append(name)
    return sorted(foreign)


def _links_inside(path: Path) -> list[str]:
    links = []
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                links.append(os.path.relpath(os.path.join(folder, name), path))
    return links


def _why_not_ours_zarr(path: Path, export: bool) -> str | None:
    """None when ``path`` is a zarr folder we wrote (a store, or an export), else the reason."""
    record = _provenance(path)
    if record is None:
        return "it has no napari-diffinfinite provenance (it was not written by this tool)"
    if export != ("export" in record):
        return "it is a slide store, not an export" if export else "it is an export, not a slide store"
    allowed = {"labels", OME_DIR} | (set() if export else {STATE_DIR})
    foreign = _foreign_entries(path, allowed)
    if foreign:
        return f"it holds files this tool did not write: {', '.join(foreign[:5])}"
    links = _links_inside(path)
    if links:
        return f"it holds symbolic links: {', '.join(links[:5])}"
    return None


def is_our_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a slide store written by this tool and holds nothing else."""
    p = Path(path)
    return p.is_dir() and not p.is_symlink() and _why_not_ours_zarr(p, export=False) is None


def why_not_replaceable(path: str | os.PathLike, *, export: bool = False) -> str | None:
    """Why ``--overwrite`` would refuse ``path`` (a store, or an export with ``export``); None
    when it may be replaced. For asking the user before, not after, they choose Overwrite."""
    return _why_not_replaceable(Path(path), export)


def check_replaceable_store(path: str | os.PathLike) -> None:
    """Raise :class:`StoreError` unless ``--overwrite`` may delete what is at ``path``.

    An empty folder and a slide store of ours may be replaced; nothing else.
    """
    p = Path(path)
    reason = _why_not_replaceable(p, export=False)
    if reason is not None:
        raise StoreError(
            f"refusing to overwrite {p}: {reason}. --overwrite only replaces a slide store made by "
            f"napari-diffinfinite; choose another output path or remove it yourself"
        )


def check_replaceable_export(path: str | os.PathLike) -> None:
    """Raise :class:`ExportError` unless ``--overwrite`` may replace the file or folder at ``path``."""
    p = Path(path)
    reason = _why_not_replaceable(p, export=True)
    if reason is not None:
        raise ExportError(
            f"refusing to overwrite {p}: {reason}. --overwrite only replaces an export made by "
            f"napari-diffinfinite; choose another name or remove it yourself"
        )


def _why_not_replaceable(p: Path, export: bool) -> str | None:
    if p.is_symlink():
        return "it is a symbolic link (links are never followed)"
    if not p.exists():
        return None
    if p.is_dir():
        if _is_empty(p):
            return None
        return _why_not_ours_zarr(p, export)
    if not export:
        return "it is a file, not a slide store"
    if not p.is_file():
        return "it is not a regular file"
    return _why_not_our_export_file(p)


def _is_empty(p: Path) -> bool:
    """True for an empty folder, or one holding only a store's writer lock (a store being created)."""
    entries = list(p.iterdir())
    if not entries:
        return True
    state = p / STATE_DIR
    return (
        entries == [state]
        and state.is_dir()
        and not state.is_symlink()
        and [e.name for e in state.iterdir()] == [LOCK_FILE]
        and not (state / LOCK_FILE).is_symlink()
    )


def _why_not_our_export_file(p: Path) -> str | None:
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"II", b"MM"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                software = tif.pages.first.software
        except Exception:  # noqa: BLE001 - unreadable means not provably ours
            return "it is a TIFF this tool cannot read"
        return None if software == SOFTWARE else "it is a TIFF written by other software"
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return "it is not a TIFF or GeoJSON written by this tool"
    record = data.get(PROVENANCE_KEY) if isinstance(data, dict) else None
    if isinstance(record, dict) and isinstance(record.get("export"), dict):
        return None
    return "it is a JSON file without this tool's export record"


def remove_store_contents(path: Path, keep: Path) -> None:
    """Delete everything in the store folder ``path`` except the file ``keep`` (its lock).

    Call only after :func:`check_replaceable_store` passed and the store's lock is held.
    """
    keep = keep.resolve()
    for entry in os.scandir(path):
        p = Path(entry.path)
        if keep.is_relative_to(p.resolve()) and entry.is_dir(follow_symlinks=False):
            for inner in os.scandir(p):
                q = Path(inner.path)
                if q.resolve() == keep:
                    continue
                _remove(q)
        else:
            _remove(p)


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except OSError as exc:
        raise StoreError(f"cannot remove {p} while overwriting: {exc.strerror or exc}") from exc
