"""Which progress events a worker passes on to the GUI (no Qt here).

The engine reports once per batch; on a fast device that is hundreds of events a second,
and every event the GUI applies costs a repaint (expensive with software OpenGL, on a VM
or a remote desktop). :class:`ProgressThrottle` sits on the worker side and forwards:

- the first event of each stage and the last one (``done >= total``), so stage changes
  and completion are never lost;
- events with a preview image at most once per ``preview_interval`` seconds (the engine
  sends one per sampling step), plus the last one;
- any other event at most once per ``interval`` seconds.

Forwarded events keep their order and each is applied exactly once by the receiver.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from ..progress import ProgressEvent

#: seconds between forwarded progress events (at most 5 a second)
PROGRESS_INTERVAL = 0.2
#: seconds between forwarded preview images
PREVIEW_INTERVAL = 1.0


class ProgressThrottle:
    """A progress callback that forwards a thinned, ordered subset of events to ``forward``."""

    def __init__(
        self,
        forward: Callable[[ProgressEvent], None],
        *,
        interval: float = PROGRESS_INTERVAL,
        preview_interval: float = PREVIEW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.forward = forward
        self.interval = float(interval)
        self.preview_interval = float(preview_interval)
        self.clock = clock
        self._stage: str | None = None
        self._last = -float("inf")
        self._last_preview = -float("inf")
        self.received = 0
        self.forwarded = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.received += 1
        now = self.clock()
        final = event.total > 0 and event.done >= event.total
        if event.preview is not None:
            if final or now - self._last_preview >= self.preview_interval:
                self._last_preview = now
                self._send(event, now)
                return
            event = dataclasses.replace(event, preview=None)
        if final or event.stage != self._stage or now - self._last >= self.interval:
            self._send(event, now)

    def _send(self, event: ProgressEvent, now: float) -> None:
        self._stage = event.stage
        self._last = now
        self.forwarded += 1
        self.forward(event)
