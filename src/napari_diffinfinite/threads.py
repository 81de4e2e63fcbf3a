"""How many CPU threads torch should use for sampling on this machine.

PyTorch's default is one thread per logical CPU. On a small machine that other jobs share,
that is the worst choice: when the cores are busy, threads that wait for each other at
every operator's barrier make a run several times slower than a single thread would (the
demo's layout stage once ran 50 times slower with 2 threads under a load of 2). The policy
here:

* never more threads than physical cores the process may run on, and at most
  :data:`MAX_THREADS` (beyond that small convolutions gain little);
* minus the cores that other processes keep busy, judged by the 1-minute load average
  read before sampling starts; at least 1;
* an explicit ``OMP_NUM_THREADS`` wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def sampling_threads(load: float | None = None, cores: int | None = None, max_threads: int = MAX_THREADS) -> int:
    """Threads for sampling: physical cores (at most ``max_threads``) minus the cores that the
    1-minute load average says are busy, at least 1."""
    cores = physical_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    idle = math.floor(usable_cpus() - load + 0.5)
    return max(1, min(cores, max_threads, idle))


def configure_torch_threads() -> int:
    """Set torch's intra-op threads by :func:`sampling_threads` unless ``OMP_NUM_THREADS`` is
    set; returns the thread count torch uses."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(sampling_threads())
    return torch.get_num_threads()
