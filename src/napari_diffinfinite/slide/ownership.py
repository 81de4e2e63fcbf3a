"""What ``overwrite=True`` may delete: only slide stores and exports this tool wrote.

A path is replaced only when it is recognisably ours:

- a **slide store**: a folder whose root zarr attributes hold our provenance
  (``diffinfinite.software == "napari-diffinfinite"``, no ``export`` record) and which holds,
  all the way down, nothing but what a store holds (zarr metadata, level arrays ``0``, ``1``,
  ... with their chunk files, ``labels/tissue`` and its levels, ``OME``, the state folder
  ``diffinfinite`` with its own few files, zarr's ``*.partial`` leftovers);
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
from .constants import LABEL_NAME, LOCK_FILE, OME_DIR, OME_XML, PROVENANCE_KEY, SOFTWARE, STATE_DIR

__all__ = [
    "zarr_root_attrs",
    "is_our_store",
    "check_replaceable_store",
    "check_replaceable_export",
    "remove_store_contents",
    "links_inside",
    "unexpected_entries",
    "why_not_replaceable",
]

_ZARR_FILES = {".zgroup", ".zattrs", ".zarray", "zarr.json", ".zmetadata"}
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


#: chunk keys of a zarr array: "0.1.2" (format 2) or one part of a nested key "0/1/2"; zarr
#: format 3 nests them under "c"
_CHUNK = re.compile(r"^\d+(\.\d+)*$")
#: the files of the state folder (:mod:`.store`): pointer, label canvas, writer lock, the
#: temporary files of their atomic replacement, and the two state slots of ``.npy`` arrays
_STATE_FILES = re.compile(r"^\.?(state\.json|canvas\.npy)(\.tmp-\d+)?$")
_STATE_SLOT = re.compile(r"^state_[01]$")
_STATE_ARRAY = re.compile(r"^[A-Za-z0-9_]+\.npy$")


def _is_zarr_file(name: str) -> bool:
    return name in _ZARR_FILES or name.endswith(".partial")


def _foreign_inside(path: Path, export: bool) -> list[str]:
    """Every entry below ``path`` that a store (or an OME-Zarr export) of ours never holds.

    The whole tree is checked, not only the top level: a user's ``labels/notes.geojson`` or
    ``0/precious.txt`` inside a store must stop ``--overwrite`` as surely as a top-level file.
    Symbolic links count as foreign wherever they are (never followed).
    """
    foreign: list[str] = []

    def walk(folder: Path, rule: str) -> None:
        for entry in os.scandir(folder):
            rel = os.path.relpath(entry.path, path)
            if entry.is_symlink():
                foreign.append(f"{rel} (a symbolic link)")
            elif entry.is_dir(follow_symlinks=False):
                inner = _dir_rule(rule, entry.name, export)
                if inner is None:
                    foreign.append(rel + "/")
                else:
                    walk(Path(entry.path), inner)
            elif not _file_allowed(rule, entry.name):
                foreign.append(rel)

    walk(path, "root")
    return sorted(foreign)


def _dir_rule(rule: str, name: str, export: bool) -> str | None:
    """What a folder ``name`` inside a folder of kind ``rule`` must be, or None if it is foreign."""
    if rule in ("root", "label-image") and _LEVEL.match(name):
        return "array"
    if rule == "root":
        return {"labels": "labels", OME_DIR: "ome", **({} if export else {STATE_DIR: "state"})}.get(name)
    if rule == "labels" and name == LABEL_NAME:
        return "label-image"
    if rule == "array" and (_CHUNK.match(name) or name == "c"):
        return "array"
    if rule == "state" and _STATE_SLOT.match(name):
        return "slot"
    return None


def _file_allowed(rule: str, name: str) -> bool:
    if rule in ("root", "labels", "label-image"):
        return _is_zarr_file(name)
    if rule == "array":
        return _is_zarr_file(name) or bool(_CHUNK.match(name))
    if rule == "ome":
        return _is_zarr_file(name) or name == OME_XML
    if rule == "state":
        return name == LOCK_FILE or bool(_STATE_FILES.match(name))
    if rule == "slot":
        return bool(_STATE_ARRAY.match(name))
    return False


def unexpected_entries(
    folder: str | os.PathLike, files: set[str], dirs: dict[str, re.Pattern] | None = None
) -> list[str]:
    """What in ``folder`` this tool did not write, for a folder it replaces whole (a report,
    a study): names outside ``files``, and in each folder of ``dirs`` files not matching its
    pattern; links and anything deeper always count. An empty list means it may be replaced."""
    dirs = dirs or {}
    unexpected = []
    for entry in os.scandir(folder):
        if entry.is_symlink():
            unexpected.append(f"{entry.name} (a symbolic link)")
        elif entry.is_dir(follow_symlinks=False) and entry.name in dirs:
            for inner in os.scandir(entry.path):
                if (
                    inner.is_symlink()
                    or not inner.is_file(follow_symlinks=False)
                    or not dirs[entry.name].match(inner.name)
                ):
                    unexpected.append(f"{entry.name}/{inner.name}")
        elif entry.is_dir(follow_symlinks=False) or entry.name not in files:
            unexpected.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return sorted(unexpected)


def links_inside(path: str | os.PathLike) -> list[str]:
    """Symbolic links anywhere below ``path`` (relative paths), found without following any."""
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
    foreign = _foreign_inside(path, export)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"it holds files this tool did not write: {', '.join(foreign[:5])}{more}"
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
