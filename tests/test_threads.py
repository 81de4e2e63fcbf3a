"""The CLI's torch thread policy: physical cores, capped, minus the cores the load keeps busy."""

from __future__ import annotations

import pytest

from napari_diffinfinite import threads

# Two packages of two cores with two hyper-threads each: 8 logical CPUs, 4 physical cores.
CPUINFO = "\n\n".join(f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {(i // 2) % 2}" for i in range(8))


def test_physical_cores_counts_package_and_core_pairs(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    assert threads.physical_cores(CPUINFO) == 4


def test_physical_cores_falls_back_to_logical_cpus(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 3)
    assert threads.physical_cores("processor\t: 0\n") == 3


@pytest.mark.parametrize(
    ("load", "cores", "cpus", "expected"),
    [
        (0.0, 2, 2, 2),  # idle 2-core machine: both cores
        (1.2, 2, 2, 1),  # another job holds a core: one thread
        (6.0, 2, 2, 1),  # busy: never fewer than one
        (0.0, 16, 32, 4),  # big machine: capped
        (0.0, 4, 8, 4),  # hyper-threads do not count
    ],
)
def test_sampling_threads(monkeypatch, load, cores, cpus, expected):
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    assert threads.sampling_threads(load=load, cores=cores) == expected


def test_configure_torch_threads_respects_omp_num_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "sampling_threads", lambda: pytest.fail("policy used despite OMP_NUM_THREADS"))
    assert threads.configure_torch_threads() == before


def _stat(busy: list[int], idle: list[int], nice: int = 0) -> str:
    lines = [f"cpu  {sum(busy)} 0 0 {sum(idle)} 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} {nice} 0 {d} 0 0 0 0 0 0" for i, (b, d) in enumerate(zip(busy, idle))]
    return "\n".join(lines) + "\nintr 1 2 3\n"


def test_busy_cpus_reads_the_cpu_time_of_others_not_the_load_average(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: 0.0)
    # one CPU busy all the time, the other idle: one CPU busy, whatever the load average says
    reads = iter([_stat([1000, 50], [50, 1000]), _stat([1100, 50], [50, 1100])])
    busy = threads.busy_cpus(interval=0.0, read_stat=lambda: next(reads))
    assert busy == pytest.approx(1.0)
    # niced time does not count for a process that is not niced itself
    monkeypatch.setattr(threads.os, "getpriority", lambda *a: 0)
    reads = iter([_stat([0, 0], [0, 0], nice=0), _stat([0, 0], [100, 100], nice=100)])
    assert threads.busy_cpus(interval=0.0, read_stat=lambda: next(reads)) == pytest.approx(0.0)
    monkeypatch.setattr(threads.os, "getpriority", lambda *a: 10)
    reads = iter([_stat([0, 0], [0, 0], nice=0), _stat([0, 0], [100, 100], nice=100)])
    assert threads.busy_cpus(interval=0.0, read_stat=lambda: next(reads)) == pytest.approx(1.0)


def test_busy_cpus_without_proc_stat_is_none():
    def missing() -> str:
        raise OSError("no /proc/stat")

    assert threads.busy_cpus(interval=0.0, read_stat=missing) is None


class _Machine:
    """A fake clock and thread setting: ``speed[n]`` progress units per second with n threads."""

    def __init__(self, speed: dict[int, float]) -> None:
        self.speed, self.now, self.threads, self.done = speed, 0.0, None, 0.0

    def set_threads(self, n: int) -> None:
        self.threads = n

    def advance(self, seconds: float) -> threads.ProgressEvent:
        self.now += seconds
        self.done += self.speed[self.threads] * seconds
        return threads.ProgressEvent("sample", int(self.done), 10**9)


def _run(tuner: threads.AdaptiveThreads, machine: _Machine, seconds: float) -> list[int]:
    used = []
    for _ in range(int(seconds / 0.5)):
        tuner(machine.advance(0.5))
        used.append(machine.threads)
    return used


def test_adaptive_threads_settles_on_the_fastest_count_and_follows_a_change_of_load():
    machine = _Machine({1: 100.0, 2: 170.0})  # idle 2 cores: two threads are faster
    seen = []
    tuner = threads.AdaptiveThreads(seen.append, [1, 2], start=1, clock=lambda: machine.now,
                                    set_threads=machine.set_threads)  # fmt: skip
    used = _run(tuner, machine, 60)
    assert seen and len(seen) == len(used)  # every event is passed on
    assert used[-20:].count(2) >= 18 and used.count(2) > 0.8 * len(used)
    machine.speed = {1: 90.0, 2: 25.0}  # another process takes a core: two threads collapse
    used = _run(tuner, machine, 120)
    assert used[-40:].count(1) >= 36, "it stays on the collapsed count"
    assert used.count(2) < 0.15 * len(used), "it keeps retrying the collapsed count too often"
    machine.speed = {1: 100.0, 2: 170.0}  # the core comes free again
    used = _run(tuner, machine, 120)
    assert used[-20:].count(2) >= 18


def test_adaptive_threads_does_not_tune_other_stages():
    machine = _Machine({1: 100.0, 2: 170.0})
    tuner = threads.AdaptiveThreads(None, [1, 2], start=1, clock=lambda: machine.now, set_threads=machine.set_threads)
    for _ in range(50):
        machine.now += 0.5
        tuner(threads.ProgressEvent("decode", int(machine.now), 100))
    assert machine.threads == 1 and tuner.summary() == "1 thread"


class _Sampler(_Machine):
    """A sampler's step on the fake machine: ``speed[n]`` network evaluations per second; the
    step's first ``costly`` evaluations are three per patch (patches of three classes), the
    rest one per patch, so patches per second swing threefold within every step."""

    def __init__(self, speed: dict[int, float], step_evals: float, costly: float) -> None:
        super().__init__(speed)
        self.step_evals, self.costly = step_evals, costly

    def patches(self, evals: float) -> float:
        steps, within = divmod(evals, self.step_evals)
        per_step = self.costly / 3 + self.step_evals - self.costly
        return steps * per_step + min(within, self.costly) / 3 + max(0.0, within - self.costly)

    def advance(self, seconds: float) -> threads.ProgressEvent:
        self.now += seconds
        self.done += self.speed[self.threads] * seconds
        return threads.ProgressEvent("sample", int(self.patches(self.done)), 10**9, work=int(self.done))


def test_adaptive_threads_times_network_evaluations_not_patches():
    # two threads are 1.2x faster; timed in patches, the first window (two threads, on the
    # step's three-class patches) would lose to the next (one thread, on one-class patches)
    machine = _Sampler({1: 100.0, 2: 120.0}, step_evals=2400.0, costly=240.0)
    tuner = threads.AdaptiveThreads(None, [1, 2], start=2, clock=lambda: machine.now,
                                    set_threads=machine.set_threads)  # fmt: skip
    used = _run(tuner, machine, 240)
    assert used.count(2) > 0.9 * len(used), f"two threads {used.count(2) / len(used):.0%} of the time"
