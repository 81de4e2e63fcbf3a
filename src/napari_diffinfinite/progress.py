"""Progress reporting and cooperative cancellation shared by every long operation.

Long operations take ``progress`` (a callable receiving :class:`ProgressEvent`) and
``cancel`` (a :class:`CancelToken`); they report and check for cancellation at least once
per batch, so a GUI worker thread can stop them within one batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import DiffInfiniteError


@dataclass
class ProgressEvent:
    """One progress report.

    ``stage`` is one of "load", "mask", "sample", "decode", "pyramid", "export", "train".
    ``preview`` optionally carries a small (h, w, 3) uint8 image of the current result.
    ``work`` optionally counts the compute done so far in the stage in units of equal cost
    (the samplers: network evaluations). ``done`` counts what the user sees (patches of a
    step), which can cost one evaluation or four; :class:`~napari_diffinfinite.threads.AdaptiveThreads`
    times its thread counts by ``work`` where it is given.
    """

    stage: str
    done: int
    total: int
    message: str = ""
    preview: np.ndarray | None = None
    work: int | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[ProgressEvent], None]


class Cancelled(DiffInfiniteError):
    """Raised inside a long operation when its :class:`CancelToken` was cancelled."""


class CancelToken:
    """A thread-safe flag that asks a long operation to stop at its next checkpoint."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` if a callback was given."""
    if progress is not None:
        progress(event)


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` was cancelled."""
    if cancel is not None:
        cancel.raise_if_cancelled()
