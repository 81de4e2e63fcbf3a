"""What a worker forwards to the GUI: one event a second, never a stage's first or last
one lost, the newest preview shown (pure: runs without napari)."""

from __future__ import annotations

import numpy as np

from napari_diffinfinite.progress import ProgressEvent
from napari_diffinfinite.widgets._throttle import ProgressThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(events, step_s=0.01, interval=1.0):
    clock, seen = Clock(), []
    throttle = ProgressThrottle(seen.append, interval=interval, clock=clock)
    for event in events:
        throttle(event)
        clock.now += step_s
    return throttle, seen


def test_thins_a_flood_of_batch_reports_keeping_order_stages_and_the_end():
    sample = [ProgressEvent("sample", k, 1000) for k in range(1, 1001)]  # 10 s at 100 events/s
    decode = [ProgressEvent("decode", k, 50) for k in range(1, 51)]
    throttle, seen = _run(sample + decode)
    assert throttle.received == 1050
    assert len(seen) <= 10 + 1 + 4  # one a second, plus the stages' first and last events
    assert [e.stage for e in seen].index("decode") == sum(e.stage == "sample" for e in seen)  # order kept
    done = [e.done for e in seen if e.stage == "sample"]
    assert done == sorted(done) and done[0] == 1 and done[-1] == 1000  # first and last of the stage
    assert seen[-1].done == 50 and seen[-1].stage == "decode"
    assert throttle.forwarded == len(seen)


def test_the_newest_preview_rides_on_the_next_forwarded_event():
    def preview(k):
        return np.full((4, 4, 3), k, np.uint8)

    events = []
    for k in range(40):  # 40 steps of 0.25 s: 10 batch reports each, a preview at the end of the step
        events += [ProgressEvent("sample", k * 10 + b, 400) for b in range(1, 10)]
        events.append(ProgressEvent("sample", (k + 1) * 10, 400, preview=preview(k)))
    _, seen = _run(events, step_s=0.025)
    with_preview = [e for e in seen if e.preview is not None]
    assert len(seen) <= 10 + 2 and len(with_preview) >= len(seen) - 2  # a preview with nearly every update
    shown = [int(e.preview[0, 0, 0]) for e in with_preview]
    assert shown == sorted(set(shown)) and shown[-1] == 39  # newest first, never twice, the last one shown
