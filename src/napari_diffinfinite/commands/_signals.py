"""SIGINT/SIGTERM as cooperative cancellation for long commands.

Inside :func:`cancel_on_signals` the first SIGINT (Ctrl-C) or SIGTERM cancels the yielded
:class:`~napari_diffinfinite.progress.CancelToken`: the engine saves its state at the next
batch and raises :class:`~napari_diffinfinite.progress.Cancelled`. A second SIGINT raises
KeyboardInterrupt at once, for a user who will not wait for the batch to finish.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..progress import CancelToken


@contextmanager
def cancel_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[CancelToken]:
    """Yield a token that SIGINT/SIGTERM cancel; the previous handlers are restored on exit.

    Outside the main thread (where Python cannot install handlers) the token is plain.
    """
    token = CancelToken()
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum: int, _frame) -> None:
        if token.cancelled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not token.cancelled:
            name = signal.Signals(signum).name
            print(f"\ndiffinfinite: {name} received: saving the state and stopping after this batch "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)  # fmt: skip
        token.cancel()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield token
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside, as Ctrl-C does, for commands that cannot be
    cancelled cooperatively: their ``finally`` blocks then remove temporary output, which the
    default SIGTERM (immediate exit) would leave behind. Plain outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
