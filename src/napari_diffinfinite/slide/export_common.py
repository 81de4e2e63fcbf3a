"""What every exporter shares: the result record, regions, the source store, provenance, progress."""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DiffInfiniteError, ExportError
from ..progress import ProgressCallback, ProgressEvent, report
from .constants import LABEL_NAME, SOFTWARE
from .store import SlideStore

__all__ = [
    "Region",
    "ExportResult",
    "parse_region",
    "check_region",
    "open_source",
    "label_source",
    "export_provenance",
    "export_warnings",
    "ExportProgress",
]

Region = tuple[int, int, int, int]


@dataclass
class ExportResult:
    """What an export wrote.

    ``path`` is the main output (usable wherever a path is: ``os.fspath(result)``),
    ``files`` every output (e.g. the TIFF and its label TIFF), ``region`` the exported
    (x, y, w, h), ``warnings`` anything the user should know (e.g. a partial slide).
    """

    path: Path
    format: str
    region: Region
    files: list[Path] = field(default_factory=list)
    num_levels: int = 0
    warnings: list[str] = field(default_factory=list)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return os.fspath(self.path)


def parse_region(text: str) -> Region:
    """Parse ``"x,y,w,h"`` (level-0 pixels) into a tuple of ints."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ExportError(f"a region is 'x,y,w,h' in level-0 pixels (four integers), got {text!r}")
    return values  # type: ignore[return-value]


def check_region(region: Sequence[int] | None, shape: tuple[int, int]) -> Region:
    """Validate an (x, y, w, h) region against a slide of ``shape`` (H, W).

    ``None`` means the whole slide. Raises :class:`ExportError` for an empty region or
    one that is not entirely inside the slide.
    """
    H, W = shape
    if region is None:
        return (0, 0, int(W), int(H))
    if len(region) != 4:
        raise ExportError(f"a region is (x, y, w, h) in level-0 pixels, got {region!r}")
    x, y, w, h = (int(v) for v in region)
    if w <= 0 or h <= 0:
        raise ExportError(f"the region {x},{y},{w},{h} is empty: width and height must be > 0")
    if x < 0 or y < 0 or x + w > W or y + h > H:
        raise ExportError(
            f"the region {x},{y},{w},{h} (x, y, w, h) is outside the slide, which is "
            f"{W} x {H} px (x in 0..{W}, y in 0..{H})"
        )
    return (x, y, w, h)


def open_source(src: str | os.PathLike | SlideStore) -> SlideStore:
    """The slide store to export, opened read-only (a :class:`SlideStore` is used as is)."""
    if isinstance(src, SlideStore):
        return src
    try:
        return SlideStore.open(src, mode="r")
    except DiffInfiniteError as exc:
        raise ExportError(f"cannot export {src}: {exc}") from exc


def label_source(store: SlideStore, level: int = 0) -> Any | None:
    """The store's label level ``level``, or None when it has no label image."""
    try:
        return store.label_level(level)
    except DiffInfiniteError:
        return None


def export_provenance(store: SlideStore, fmt: str, region: Region) -> dict[str, Any]:
    """The store's provenance plus an ``export`` record; ``export.id`` is new for every export."""
    record = dict(store.provenance)
    record.setdefault("software", SOFTWARE)
    record["export"] = {
        "id": str(uuid.uuid4()),
        "format": fmt,
        "source": os.fspath(store.path),
        "source_shape": list(store.shape),
        "region": {"x": region[0], "y": region[1], "w": region[2], "h": region[3]},
        "software": SOFTWARE,
        "version": __version__,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return record


def export_warnings(store: SlideStore, has_labels: bool) -> list[str]:
    """What the user should know about an export of ``store`` (partial slide, no labels)."""
    notes = []
    provenance = store.provenance
    if provenance and provenance.get("complete") is False:
        notes.append(
            f"{store.path} is a partial slide (its generation has not finished): tiles not "
            "yet generated are exported black"
        )
    if not has_labels:
        notes.append(f"{store.path} has no {LABEL_NAME!r} label image; only the image was exported")
    return notes


class ExportProgress:
    """Counts finished units of work and reports them as stage "export"."""

    def __init__(self, progress: ProgressCallback | None, total: int, message: str) -> None:
        self.progress = progress
        self.total = max(int(total), 1)
        self.done = 0
        self.message = message
        report(progress, ProgressEvent("export", 0, self.total, message))

    def step(self, message: str | None = None) -> None:
        self.done += 1
        if message is not None:
            self.message = message
        report(self.progress, ProgressEvent("export", self.done, self.total, self.message))

    def finish(self, message: str = "done") -> None:
        self.done = self.total - 1
        self.step(message)
