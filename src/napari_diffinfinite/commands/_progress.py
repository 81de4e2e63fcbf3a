"""A tqdm progress bar per stage, driven by engine progress events."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from ..progress import ProgressEvent

_UNITS = {"sample": ("sampling", "step", 1000), "mask": ("layout", "step", 1000), "decode": ("decoding", "tile", 1)}


class TqdmProgress:
    """Callable for ``progress=``: one bar per stage, closed when the stage changes.

    ``seconds`` adds up the wall-clock time from each stage's first event to the next
    stage's (or :meth:`close`), for a "where did the time go" line.
    """

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable or not sys.stderr
        self.bar: tqdm | None = None
        self.stage: str | None = None
        self.divisor = 1
        self.seconds: dict[str, float] = {}
        self._since: float | None = None

    def _account(self) -> None:
        now = time.perf_counter()
        if self.stage is not None and self._since is not None:
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self._since
        self._since = now

    def timing(self) -> str:
        """E.g. ``"mask 14 s, sample 150 s, decode 2 s"``, in the order the stages ran."""
        return ", ".join(f"{stage} {s:.1f} s" for stage, s in self.seconds.items())

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.close()  # also ends the previous stage's time
            label, unit, self.divisor = _UNITS.get(event.stage, (event.stage, "it", 1))
            self.bar = tqdm(total=round(event.total / self.divisor), desc=label, unit=unit, disable=self.disable)
            self.stage = event.stage
        if self.bar is not None:
            self.bar.n = round(event.done / self.divisor, 2)
            if event.message:
                self.bar.set_postfix_str(event.message, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self._account()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None
