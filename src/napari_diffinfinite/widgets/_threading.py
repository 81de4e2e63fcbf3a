"""Running engine calls off the GUI thread, and showing their progress cheaply.

The engine reports progress through a plain callback that it calls from the worker
thread. :class:`ProgressRelay` thins those reports (:class:`._throttle.ProgressThrottle`:
one a second, the newest preview riding along) and turns them into a Qt signal, so the
widgets receive :class:`~napari_diffinfinite.progress.ProgressEvent` on the GUI thread
(a queued connection: in order, each once) and never touch Qt objects from the worker.

Progress is shown in the widget's own :class:`QProgressBar` and status label
(:class:`StageProgress`), not in napari's activity dock: its progress bar keeps a
software OpenGL renderer busy while open, and it processes pending Qt events while it
updates, so a later "done" could run in the middle of an earlier update.

Cancellation goes the other way through a :class:`~napari_diffinfinite.progress.CancelToken`
that the engine checks once per batch: a Cancel button only has to set the token. Closing
napari cancels too (:func:`stop_on_close`): a job must not outlive the window whose widgets
it reports to.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.compat import isalive
from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QWidget

from ..progress import Cancelled, ProgressEvent
from ._messages import gui_message
from ._throttle import ProgressThrottle

logger = logging.getLogger(__name__)


class ProgressRelay(QObject):
    """Carries (throttled) progress events from the worker thread to the GUI thread.

    Create it on the GUI thread, connect :attr:`reported`, and hand the relay to the
    engine as its ``progress`` callback. It has no Qt parent on purpose: a parent (the
    widget) is deleted with the window, and a worker still reporting would then emit on a
    deleted object, which crashes the process; unparented, it lives as long as the worker
    holds it.
    """

    #: not named "event": that would shadow QObject.event(), which Qt calls to deliver events
    reported = Signal(object)

    def __init__(self, **throttle: Any) -> None:
        super().__init__()
        self.throttle = ProgressThrottle(self.reported.emit, **throttle)

    def __call__(self, event: ProgressEvent) -> None:
        self.throttle(event)


def notify_error(exc: BaseException, what: str = "") -> None:
    """Show an error as a napari notification in plain words, never as a traceback.

    Engine errors already say what is wrong and how to fix it; other exceptions are worded
    by :func:`._messages.gui_message` and their traceback goes to the log.
    """
    prefix = f"{what}: " if what else ""
    if isinstance(exc, Cancelled):
        show_info(f"{prefix}{exc}")
        return
    if not isinstance(exc, (OSError,)) and type(exc).__module__.split(".")[0] != "napari_diffinfinite":
        logger.error("%s failed", what or "operation", exc_info=exc)
    show_error(f"{prefix}{gui_message(exc)}")


def while_alive(owner: QObject, callback: Callable[..., None]) -> Callable[..., None]:
    """``callback``, skipped once the Qt object ``owner`` has been deleted."""

    def call(*args: Any) -> None:
        if isalive(owner):
            callback(*args)

    return call


def start_worker(
    func: Callable[..., Any],
    *args: Any,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    owner: QObject | None = None,
    **kwargs: Any,
) -> FunctionWorker:
    """Run ``func(*args, **kwargs)`` in napari's thread pool and return its worker.

    Errors never propagate as tracebacks: they go to ``on_error`` (default:
    :func:`notify_error`). ``on_finished`` runs after success, error or cancel alike.
    ``owner``: the widget the callbacks update; they are skipped once it has been deleted (a
    worker that outlives its widget, e.g. napari closed while a model was being timed, would
    otherwise touch deleted Qt objects).
    """
    stopped = threading.Event()

    def run(*run_args: Any, **run_kwargs: Any) -> Any:
        try:
            return func(*run_args, **run_kwargs)
        finally:
            stopped.set()

    worker = create_worker(run, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    #: set in the worker thread when ``func`` has returned or raised (the worker's own
    #: ``finished`` signal is queued to the GUI thread, which may be the one waiting)
    worker.stopped = stopped

    def guarded(callback: Callable[..., None]) -> Callable[..., None]:
        return callback if owner is None else while_alive(owner, callback)

    if on_result is not None:
        worker.returned.connect(guarded(on_result))
    worker.errored.connect(guarded(on_error) if on_error is not None else notify_error)
    if on_finished is not None:
        worker.finished.connect(guarded(on_finished))
    worker.start()
    return worker


#: seconds that closing napari waits for a running job to stop at its next batch
CLOSE_WAIT_S = 15.0
TASK_PROVIDER = "napari-diffinfinite"


def stop_on_close(
    viewer: Any,
    worker: FunctionWorker,
    token: Any,
    description: str,
    on_close: Callable[[], None] | None = None,
    widget: QWidget | None = None,
) -> None:
    """Cancel ``worker``'s job (through ``token``) when napari's window closes, and wait for it.

    The job is registered with the window's task-status manager: closing the window asks
    the user first ("tasks are running"), then cancels every registered task; here that sets
    the token and waits up to :data:`CLOSE_WAIT_S` for the job to stop (a generation saves
    its state, so the store stays resumable), then calls ``on_close`` (the widget stops
    showing the job: results and progress still queued must not add layers to a closed
    viewer). Without this the worker ran on after the window was gone and reported to
    deleted widgets, which crashed napari on exit.

    napari 0.9 offers plugins no public hook for this: the task manager is private (and warns
    when a plugin reaches it). Where it is missing (a later napari), the same cancel-and-wait
    runs when ``widget``'s top-level window receives its Close event (plain Qt), without
    napari's question first.
    """
    stopped: threading.Event = worker.stopped

    def cancel_and_wait() -> bool:
        if stopped.is_set():  # napari cancels finished tasks too
            return True
        token.cancel()
        ended = stopped.wait(CLOSE_WAIT_S)
        if on_close is not None:
            on_close()
        return ended

    manager = _task_manager(viewer)
    if manager is None:
        if widget is not None:
            _on_window_close(widget, worker, cancel_and_wait)
        return
    register, update = manager
    from napari.utils.task_status import Status

    task = register(TASK_PROVIDER, Status.BUSY, description, cancel_and_wait)

    def finished() -> None:
        try:
            update(task, Status.COMPLETED)
        except Exception:  # noqa: BLE001 - the window may be gone; nothing to update then
            logger.debug("task status not updated", exc_info=True)

    worker.finished.connect(finished)


def _task_manager(viewer: Any) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """napari's (private) register and update functions of its window's task manager, or None.

    napari warns (FutureWarning) when a plugin reaches them; the access is deliberate (see
    stop_on_close), so the lookup and both functions' calls are made without the warning."""
    window = getattr(viewer, "window", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        register = getattr(window, "_register_task_status", None)
        update = getattr(window, "_update_task_status", None)
    if register is None or update is None:
        return None

    def quietly(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return function(*args)

        return call

    return quietly(register), quietly(update)


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the watched window receives its Close event (see stop_on_close)."""

    def __init__(self, on_close: Callable[[], Any], parent: QObject) -> None:
        super().__init__(parent)  # deleted with the window at the latest
        self.on_close: Callable[[], Any] | None = on_close

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close and self.on_close is not None:
            on_close, self.on_close = self.on_close, None  # once; and hold nothing of the job after
            watched.removeEventFilter(self)
            on_close()
        return False  # the window handles its Close event as usual


def _on_window_close(widget: QWidget, worker: FunctionWorker, cancel_and_wait: Callable[[], bool]) -> None:
    top = widget.window()
    watcher = _CloseWatcher(cancel_and_wait, top)
    top.installEventFilter(watcher)

    def finished() -> None:  # holds no reference to the window (it would keep the viewer alive)
        if isalive(watcher):
            watcher.on_close = None
            window = watcher.parent()
            if window is not None:
                window.removeEventFilter(watcher)
            watcher.deleteLater()

    worker.finished.connect(finished)


STAGE_NAMES = {
    "load": "Loading",
    "mask": "Sampling the layout",
    "sample": "Sampling",
    "decode": "Decoding tiles",
    "pyramid": "Writing labels",
    "export": "Exporting",
}


class StageProgress:
    """A multi-stage operation ("sample", then "decode", ...) in the widget's own QProgressBar.

    Setting a QProgressBar's value only schedules a repaint of the bar; nothing here
    processes events, so updates cannot re-enter. Events after :meth:`close` are dropped,
    so a straggler cannot reopen a finished bar.
    """

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.stage: str | None = None
        self.applied = 0
        self._active = False
        bar.setTextVisible(False)
        bar.setRange(0, 1)
        bar.setValue(0)

    @staticmethod
    def stage_name(stage: str) -> str:
        return STAGE_NAMES.get(stage, stage)

    def start(self) -> None:
        """A new operation begins: accept its events."""
        self.close()
        self._active = True
        self.applied = 0

    @property
    def active(self) -> bool:
        return self._active

    def update(self, event: ProgressEvent) -> bool:
        """Show ``event``; False (and nothing shown) when no operation is running."""
        if not self._active:
            return False
        total = max(int(event.total), 1)
        done = min(max(int(event.done), 0), total)
        self.stage = event.stage
        self.applied += 1
        if self.bar.maximum() != total:
            self.bar.setRange(0, total)
        self.bar.setValue(done)
        self.bar.setFormat(f"{self.stage_name(event.stage)} %p%")
        self.bar.setTextVisible(True)
        return True

    def close(self) -> None:
        """The operation ended: clear the bar (a determinate 0..1 range never animates)."""
        self._active = False
        self.stage = None
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)
