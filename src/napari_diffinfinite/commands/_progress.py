"""A tqdm progress bar per stage, driven by engine progress events."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from ..progress import ProgressEvent

_UNITS = {"sample": ("sampling", "step", 1000), "mask": ("layout", "step", 1000), "decode": ("decoding", "tile", 1)}


class TqdmProgress:
    """Callable for ``progress=``: one bar per stage, closed when the stage changes."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable or not sys.stderr
        self.bar: tqdm | None = None
        self.stage: str | None = None
        self.divisor = 1

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.close()
            label, unit, self.divisor = _UNITS.get(event.stage, (event.stage, "it", 1))
            self.bar = tqdm(total=round(event.total / self.divisor), desc=label, unit=unit, disable=self.disable)
            self.stage = event.stage
        if self.bar is not None:
            self.bar.n = round(event.done / self.divisor, 2)
            if event.message:
                self.bar.set_postfix_str(event.message, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None
