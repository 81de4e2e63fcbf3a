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
