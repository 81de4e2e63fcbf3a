"""What a worker forwards to the GUI: few events, previews rarely, never the last one lost
(pure: runs without napari)."""

from __future__ import annotations

import numpy as np

from napari_diffinfinite.progress import ProgressEvent
from napari_diffinfinite.widgets._throttle import ProgressThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(events, step_s=0.01):
    clock, seen = Clock(), []
    throttle = ProgressThrottle(seen.append, interval=0.2, preview_interval=1.0, clock=clock)
    for event in events:
        throttle(event)
        clock.now += step_s
    return throttle, seen


def test_thins_a_flood_of_batch_reports_keeping_order_stages_and_the_end():
    sample = [ProgressEvent("sample", k, 1000) for k in range(1, 1001)]  # 10 s at 100 events/s
    decode = [ProgressEvent("decode", k, 50) for k in range(1, 51)]
    throttle, seen = _run(sample + decode)
    assert throttle.received == 1050
    assert len(seen) <= 10 / 0.2 + 0.5 / 0.2 + 4  # at most 5 a second, plus stage firsts and lasts
    assert [e.stage for e in seen].index("decode") == sum(e.stage == "sample" for e in seen)  # order kept
    done = [e.done for e in seen if e.stage == "sample"]
    assert done == sorted(done) and done[0] == 1 and done[-1] == 1000  # first and last of the stage
    assert seen[-1].done == 50 and seen[-1].stage == "decode"


def test_previews_at_most_once_a_second_and_the_last_one_always():
    preview = np.zeros((4, 4, 3), np.uint8)
    steps = [ProgressEvent("sample", (k + 1) * 10, 400, preview=preview) for k in range(40)]  # one per 0.1 s
    _, seen = _run(steps, step_s=0.1)
    with_preview = [e for e in seen if e.preview is not None]
    assert 4 <= len(with_preview) <= 5
    assert with_preview[-1].done == 400
    # events whose preview was dropped still count as progress, without the image
    assert all(e.preview is None for e in seen if e not in with_preview)
