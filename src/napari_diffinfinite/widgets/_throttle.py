"""Which progress events a worker passes on to the GUI (no Qt here).

The engine reports once per batch; on a fast device that is hundreds of events a second.
Under software OpenGL (a VM, a remote desktop, Xvfb) every change to the window, even one
progress bar moving, repaints and copies the whole window: about 50 ms of CPU here, plus the
X server's share. :class:`ProgressThrottle` therefore sits on the worker side and forwards
at most one event per ``interval`` seconds, so that the GUI updates everything it shows
(bar, status, preview, streamed layers) in one go, once a second by default:

- the first event of each stage and the last one (``done >= total``) always go through,
  so stage changes and completion are never lost;
- a preview image (the engine sends one per sampling step) rides on the next forwarded
  event when its own event was thinned out, so the newest preview is always shown and
  never more than once per forwarded event.

Forwarded events keep their order and each is applied exactly once by the receiver.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from ..progress import ProgressEvent

#: seconds between forwarded events: one window update a second
PROGRESS_INTERVAL = 1.0


class ProgressThrottle:
    """A progress callback that forwards a thinned, ordered subset of events to ``forward``."""

    def __init__(
        self,
        forward: Callable[[ProgressEvent], None],
        *,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.forward = forward
        self.interval = float(interval)
        self.clock = clock
        self._stage: str | None = None
        self._last = -float("inf")
        self._preview: np.ndarray | None = None
        self.received = 0
        self.forwarded = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.received += 1
        now = self.clock()
        if event.preview is not None:
            self._preview = event.preview
        final = event.total > 0 and event.done >= event.total
        if not (final or event.stage != self._stage or now - self._last >= self.interval):
            return
        if self._preview is not None and event.stage == "sample":
            event = dataclasses.replace(event, preview=self._preview)
            self._preview = None
        self._stage = event.stage
        self._last = now
        self.forwarded += 1
        self.forward(event)
