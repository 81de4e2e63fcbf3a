"""How many CPU threads torch should use for sampling on this machine.

PyTorch's default is one thread per logical CPU. On a small machine that other jobs share,
that is the worst choice: when the cores are busy, threads that wait for each other at
every operator's barrier make a run several times slower than a single thread would (the
demo's layout stage once ran 50 times slower with 2 threads under a load of 2). The policy
here:

* never more threads than physical cores the process may run on, and at most
  :data:`MAX_THREADS` (beyond that small convolutions gain little);
* minus the cores that other processes keep busy *now*: the CPU time ``/proc/stat`` counts
  over a fraction of a second (:func:`busy_cpus`), not the 1-minute load average, which
  still counts a job that has just finished (the README job once chose 1 thread on an idle
  2-core machine because of the job before it); the load average only where ``/proc/stat``
  is missing; at least 1;
* while the job runs, :class:`AdaptiveThreads` (a progress-callback wrapper) times the work
  under each candidate thread count and keeps the fastest, trying the others again now and
  then, so a run neither collapses when another process takes a core nor stays on one
  thread when the core comes free;
* an explicit ``OMP_NUM_THREADS`` wins over both.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from .progress import ProgressCallback, ProgressEvent

MAX_THREADS = 4


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_cores(cpuinfo: str | None = None) -> int:
    """Distinct (package, core) pairs in ``/proc/cpuinfo``, capped by :func:`usable_cpus`;
    the logical CPU count where that file is missing or says nothing about cores."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    cores, package = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
    return min(len(cores), usable_cpus()) if cores else usable_cpus()


def _cpu_times(stat: str, cpus: set[int] | None, count_nice: bool) -> tuple[float, float]:
    """(busy, total) jiffies over the per-CPU lines of ``/proc/stat`` text for ``cpus``."""
    busy = total = 0.0
    for line in stat.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        v = [float(f) for f in fields[:8]] + [0.0] * (8 - len(fields[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        busy += user + system + irq + softirq + steal + (nice if count_nice else 0.0)
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return busy, total


def busy_cpus(interval: float = 0.3, read_stat: Callable[[], str] | None = None) -> float | None:
    """How many of this process's CPUs other processes keep busy now: ``/proc/stat`` read
    twice ``interval`` seconds apart, minus this process's own CPU time in between.

    Time of niced processes counts only when this process is niced too: the kernel gives a
    nice-0 process almost all of a core it shares with a nice-10 one. ``None`` where
    ``/proc/stat`` cannot be read (not Linux).
    """
    if read_stat is None:

        def read_stat() -> str:
            return Path("/proc/stat").read_text()

    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    try:
        count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        count_nice = False
    try:
        own0, (busy0, total0) = _own_cpu_seconds(), _cpu_times(read_stat(), cpus, count_nice)
        time.sleep(interval)
        own1, (busy1, total1) = _own_cpu_seconds(), _cpu_times(read_stat(), cpus, count_nice)
    except (OSError, ValueError):
        return None
    n = len(cpus) if cpus else usable_cpus()
    if total1 <= total0:
        return None
    wall_cpu = (total1 - total0) / n  # jiffies of one CPU over the interval
    busy = (busy1 - busy0) / wall_cpu  # CPUs busy, this process included
    own = (own1 - own0) / interval if interval > 0 else 0.0
    return max(0.0, busy - own)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def sampling_threads(load: float | None = None, cores: int | None = None, max_threads: int = MAX_THREADS) -> int:
    """Threads for sampling: physical cores (at most ``max_threads``) minus the cores that
    other processes keep busy (``load``; default :func:`busy_cpus`, else the 1-minute load
    average), at least 1."""
    cores = physical_cores() if cores is None else cores
    if load is None:
        load = busy_cpus()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    idle = math.floor(usable_cpus() - load + 0.5)
    return max(1, min(cores, max_threads, idle))


def max_sampling_threads(max_threads: int = MAX_THREADS) -> int:
    """The most threads worth trying on this machine: physical cores, at most ``max_threads``."""
    return max(1, min(physical_cores(), max_threads))


def configure_torch_threads() -> int:
    """Set torch's intra-op threads by :func:`sampling_threads` unless ``OMP_NUM_THREADS`` is
    set; returns the thread count torch uses."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(sampling_threads())
    return torch.get_num_threads()


class AdaptiveThreads:
    """A progress callback that keeps torch's intra-op thread count at the fastest candidate.

    Wraps ``progress`` (called with every event, unchanged). During the network-bound stages
    (``stages``: sampling and the layout) it measures the rate of progress (event ``work``
    units per second where events carry them, else ``done`` units) over windows of at least
    ``window_s`` seconds under the current thread count; after each window it moves to a
    candidate that has not been timed for ``revisit_s`` seconds (so a change of load is
    noticed), else to the fastest one timed.
    A candidate that just lost waits twice as long before its next trial (up to 8 x
    ``revisit_s``), so a count that collapses under load costs little. Rates are kept per
    stage: the layout model and the image model differ.

    Progress events come from the thread that runs the network, between batches, so the
    change applies to the next batch; ``set_threads`` defaults to ``torch.set_num_threads``.
    """

    def __init__(
        self,
        progress: ProgressCallback | None,
        candidates: list[int],
        *,
        start: int | None = None,
        stages: tuple[str, ...] = ("sample", "mask"),
        window_s: float = 2.0,
        revisit_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.progress, self.candidates = progress, sorted(set(candidates))
        self.stages, self.window_s, self.revisit_s = stages, window_s, revisit_s
        self.clock, self._set = clock, set_threads
        self.current = start if start in self.candidates else self.candidates[0]
        self._set(self.current)
        self.seconds: dict[int, float] = dict.fromkeys(self.candidates, 0.0)  # time spent per count
        self._stage: str | None = None
        self._mark: tuple[float, tuple[bool, int]] | None = None  # (when, (is work, units))
        self._rates: dict[str, dict[int, tuple[float, float]]] = {}  # stage -> n -> (rate, when)
        self._backoff: dict[int, float] = dict.fromkeys(self.candidates, 1.0)

    def __call__(self, event: ProgressEvent) -> None:
        self._observe(event)
        if self.progress is not None:
            self.progress(event)

    def _observe(self, event: ProgressEvent) -> None:
        now = self.clock()
        # the rate is timed in units of equal cost where the stage counts them (``work``:
        # network evaluations): a sampler's patches cost one evaluation per class in them, and
        # a window of one-class patches (under guidance they all come first in a step) would
        # show a count more patches per second than one of border patches
        unit = (event.work is not None, event.done if event.work is None else event.work)
        mark = self._mark
        if event.stage != self._stage or mark is None or unit[0] != mark[1][0] or unit[1] < mark[1][1]:
            self._stage, self._mark = event.stage, (now, unit)
            return
        if event.stage not in self.stages or len(self.candidates) < 2:
            return
        t0, (_, done0) = mark
        if now - t0 < self.window_s:
            return
        rates = self._rates.setdefault(event.stage, {})
        rate = (unit[1] - done0) / (now - t0)
        rates[self.current] = (rate, now)
        self.seconds[self.current] += now - t0
        best = max(rates, key=lambda n: rates[n][0])
        if best == self.current:
            self._backoff[self.current] = 1.0
        stale = [
            n for n in self.candidates
            if n != self.current and (n not in rates or now - rates[n][1] >= self.revisit_s * self._backoff[n])
        ]  # fmt: skip
        if stale:
            chosen = min(stale, key=lambda n: rates[n][1] if n in rates else -math.inf)
        else:
            chosen = best
        if chosen != self.current:
            if best != self.current and self.current in rates and rates[self.current][0] < rates[best][0]:
                self._backoff[self.current] = min(8.0, self._backoff[self.current] * 2)
            self.current = chosen
            self._set(chosen)
        self._mark = (now, unit)

    def summary(self) -> str:
        """Seconds of the tuned stages spent at each thread count, e.g. ``"2 threads 95 s, 1 thread 8 s"``."""
        parts = [f"{n} thread{'s' if n > 1 else ''} {s:.0f} s" for n, s in sorted(self.seconds.items()) if s > 0]
        return ", ".join(parts) if parts else f"{self.current} thread{'s' if self.current > 1 else ''}"


def adaptive_progress(progress: ProgressCallback | None) -> ProgressCallback | AdaptiveThreads | None:
    """``progress`` wrapped in :class:`AdaptiveThreads` starting at :func:`sampling_threads`,
    or ``progress`` itself when ``OMP_NUM_THREADS`` is set or one core is all there is."""
    if os.environ.get("OMP_NUM_THREADS") or max_sampling_threads() < 2:
        configure_torch_threads()
        return progress
    return AdaptiveThreads(progress, list(range(1, max_sampling_threads() + 1)), start=sampling_threads())
