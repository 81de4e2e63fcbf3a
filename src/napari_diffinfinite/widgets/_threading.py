"""Running engine calls off the GUI thread.

The engine reports progress through a plain callback that it calls from the worker
thread. :class:`ProgressRelay` turns that callback into a Qt signal, so the widgets
receive every :class:`~napari_diffinfinite.progress.ProgressEvent` on the GUI thread
(a queued connection) and never touch Qt objects from the worker.

Cancellation goes the other way through a :class:`~napari_diffinfinite.progress.CancelToken`
that the engine checks once per batch: a Cancel button only has to set the token.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..errors import DiffInfiniteError
from ..progress import Cancelled, ProgressEvent

logger = logging.getLogger(__name__)


class ProgressRelay(QObject):
    """Carries progress events from the worker thread to the GUI thread.

    Create it on the GUI thread, connect :attr:`reported`, and hand :meth:`__call__` to
    the engine as its ``progress`` callback.
    """

    #: not named "event": that would shadow QObject.event(), which Qt calls to deliver events
    reported = Signal(object)

    def __call__(self, event: ProgressEvent) -> None:
        self.reported.emit(event)


def notify_error(exc: BaseException, what: str = "") -> None:
    """Show an engine error as a napari notification instead of a traceback.

    Engine errors (:class:`DiffInfiniteError`) already say what is wrong and how to fix
    it, so their message is shown as is; anything else is shown with its type and its
    traceback goes to the log for a bug report.
    """
    prefix = f"{what}: " if what else ""
    if isinstance(exc, Cancelled):
        show_info(f"{prefix}{exc}")
    elif isinstance(exc, DiffInfiniteError):
        show_error(f"{prefix}{exc}")
    else:
        logger.error("%s failed", what or "operation", exc_info=exc)
        show_error(f"{prefix}{type(exc).__name__}: {exc}")


def start_worker(
    func: Callable[..., Any],
    *args: Any,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs: Any,
) -> FunctionWorker:
    """Run ``func(*args, **kwargs)`` in napari's thread pool and return its worker.

    Errors never propagate as tracebacks: they go to ``on_error`` (default:
    :func:`notify_error`). ``on_finished`` runs after success, error or cancel alike.
    """
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    if on_result is not None:
        worker.returned.connect(on_result)
    worker.errored.connect(on_error if on_error is not None else notify_error)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


class StageProgress:
    """napari's progress bar (activity dock) plus an optional in-widget QProgressBar,
    following a multi-stage operation ("sample", then "decode", ...) event by event."""

    STAGE_NAMES = {
        "load": "Loading",
        "mask": "Sampling the layout",
        "sample": "Sampling",
        "decode": "Decoding tiles",
        "pyramid": "Writing labels",
        "export": "Exporting",
    }

    def __init__(self, title: str, bar: Any = None) -> None:
        self.title = title
        self.bar = bar
        self.stage: str | None = None
        self._pbar: Any = None
        self._active = False
        if bar is not None:
            bar.setTextVisible(False)

    def start(self) -> None:
        """A new operation begins: accept its events (events after :meth:`close` are
        dropped, so a straggler cannot reopen a finished bar)."""
        self.close()
        self._active = True

    def _description(self, event: ProgressEvent) -> str:
        stage = self.STAGE_NAMES.get(event.stage, event.stage)
        return f"{self.title}: {stage}"

    def update(self, event: ProgressEvent) -> None:
        from napari.utils import progress

        if not self._active:
            return
        total = max(int(event.total), 0)
        done = min(max(int(event.done), 0), total) if total else max(int(event.done), 0)
        if self._pbar is None:
            self._pbar = progress(total=total, desc=self._description(event))
        if event.stage != self.stage:
            self.stage = event.stage
            self._pbar.total = total
            self._pbar.n = 0
            self._pbar.set_description(self._description(event))
        elif self._pbar.total != total:
            self._pbar.total = total
        if done < self._pbar.n:
            self._pbar.n = done
            self._pbar.update(0)
        else:
            self._pbar.update(done - self._pbar.n)
        if self.bar is not None:
            self.bar.setTextVisible(True)
            self.bar.setRange(0, total or 0)
            self.bar.setValue(done)
            self.bar.setFormat(f"{self.STAGE_NAMES.get(event.stage, event.stage)} %p%")

    def close(self) -> None:
        """The operation ended: close napari's bar and clear the widget's."""
        self._active = False
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.stage = None
        if self.bar is not None:
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setTextVisible(False)
