"""Sampler benchmark: the parallel random-patch sampler against the official one-at-a-time loop.

For each slide size it runs, on the same random-init network of the official image-model
layout (width ``dim``; 256 is the official one), the same mask and the same DDIM steps:

* the parallel sampler: patch evaluations per step (against the ideal H*W/P^2), network
  evaluations, seconds per step, latent pixels per second;
* optionally the sequential (official-loop) sampler over the same number of steps, for the
  speed-up at the same work.

The timed steps are the first ones of a 250-step schedule, whose cells have no context (see
:func:`~napari_diffinfinite.sampling.sampler.has_context`); one step from the middle of the
schedule, whose cells have context, is timed too (``context_*`` keys), and the speed-up over
a whole 250-step run is weighted from both (``speedup_vs_sequential_per_run``).

Each size runs in a fresh process so that its peak resident memory is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from typing import Any

import numpy as np
import torch

from ..model.config import ModelConfig, UNetConfig, default_class_colors, default_class_names
from ..model.pretrained import new_model
from ..sampling.grid import ideal_patches
from ..sampling.sampler import RandomPatchSampler
from ..sampling.sequential import SequentialPatchSampler


def bench_model_config(dim: int, num_classes: int = 5) -> ModelConfig:
    """The official image-model layout (dim_mults (1, 2, 4), 4 latent channels, 2 groups)."""
    return ModelConfig(
        kind="image",
        unet=UNetConfig(dim=dim, dim_mults=(1, 2, 4), channels=4, num_classes=num_classes, resnet_block_groups=2),
        class_names=default_class_names(num_classes),
        class_colors=default_class_colors(num_classes),
    )


def bench_labels(shape: tuple[int, int]) -> np.ndarray:
    """Two tissue classes split down the middle: some patches hold two labels, as in practice."""
    labels = np.ones(shape, np.uint8)
    labels[:, shape[1] // 2 :] = 2
    return labels


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_size(size: int, dim: int, steps: int, sequential: bool, device: str, dtype: str, batch_size: int | None):
    torch.manual_seed(0)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = new_model(bench_model_config(dim)).to(device)
    latent = (size // 8, size // 8)
    labels = bench_labels(latent)
    patch = model.config.latent_patch
    sampler = RandomPatchSampler(
        model.unet, channels=4, patch=patch, steps=250, omega=3.0, seed=0, batch_size=batch_size,
        device=device, dtype=torch_dtype,
    )  # fmt: skip
    state = sampler.initial_state(latent)
    # warm-up on one patch so one-time costs (allocations, kernel selection) are not timed
    sampler.denoiser(
        state.latent[None, :, :patch, :patch].to(device), 999, torch.from_numpy(labels[:patch, :patch])[None].to(device)
    )
    sampler.denoiser.count.network = sampler.denoiser.count.patches = 0
    started = time.perf_counter()
    sampler.run(state, labels, stop_at=steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    network_evals = sampler.denoiser.count.network  # of the timed steps only, not of the context step below
    context_step = len(sampler.schedule) // 2  # a step whose cells have context
    mid = sampler.initial_state(latent)
    mid.step = context_step
    done = len(sampler.stats.patches_per_step)
    started = time.perf_counter()
    sampler.run(mid, labels, stop_at=context_step + 1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    context_seconds = time.perf_counter() - started
    context_patches = sampler.stats.patches_per_step[done]
    sampler.stats.patches_per_step = sampler.stats.patches_per_step[:done]
    with_context = sum(sampler.context(k) > 0 for k in range(len(sampler.schedule)))
    result: dict[str, Any] = {
        "size": size,
        "latent": list(latent),
        "patch": patch,
        "steps_timed": steps,
        "evals_per_step": sampler.stats.mean_patches_per_step,
        "ideal_evals_per_step": ideal_patches(latent, patch),
        "network_evals_per_step": network_evals / steps,
        "batch_size": sampler.batch_size,
        "seconds_per_step": seconds,
        "latent_pixels_per_second": latent[0] * latent[1] / seconds,
        "context_step": context_step,
        "context_evals_per_step": context_patches,
        "context_seconds_per_step": context_seconds,
        "steps_with_context_per_run": with_context,
    }
    result["evals_vs_ideal"] = result["evals_per_step"] / result["ideal_evals_per_step"]
    if sequential:
        seq = SequentialPatchSampler(model.unet, channels=4, patch=patch, steps=250, omega=3.0, seed=0, device=device)
        started = time.perf_counter()
        seq.run(labels, max_steps=steps)
        seq_seconds = (time.perf_counter() - started) / steps
        result.update(
            sequential_evals_per_step=float(np.mean(seq.stats.patches_per_step)),
            sequential_network_evals_per_step=seq.stats.network_evals / steps,
            sequential_seconds_per_step=seq_seconds,
            speedup_vs_sequential=seq_seconds / seconds,
            speedup_vs_sequential_with_context=seq_seconds / context_seconds,
        )
        run_steps = len(sampler.schedule)
        parallel_run = (run_steps - with_context) * seconds + with_context * context_seconds
        result["speedup_vs_sequential_per_run"] = run_steps * seq_seconds / parallel_run
    result["peak_rss_mb"] = _peak_rss_mb()
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _worker(queue, *args) -> None:
    try:
        queue.put(_run_size(*args))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_benchmark(
    sizes: list[int],
    *,
    dim: int = 256,
    steps: int = 1,
    sequential_sizes: list[int] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Benchmark each size in its own process; returns one JSON-ready dictionary."""
    sequential_sizes = sizes if sequential_sizes is None else sequential_sizes
    ctx = mp.get_context("spawn")
    results = []
    for size in sizes:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_worker, args=(queue, size, dim, steps, size in sequential_sizes, device, dtype, batch_size)
        )
        proc.start()
        result = queue.get()
        proc.join()
        if "error" in result:
            raise RuntimeError(f"benchmark of {size}x{size} failed: {result['error']}")
        results.append(result)
    largest = results[-1]
    timed = [r for r in results if "speedup_vs_sequential" in r]
    model = bench_model_config(dim)
    summary = {
        "evals_per_step": largest["evals_per_step"],
        "ideal_evals_per_step": largest["ideal_evals_per_step"],
        "evals_vs_ideal": largest["evals_vs_ideal"],
        "speedup_vs_sequential": timed[-1]["speedup_vs_sequential"] if timed else None,
        "speedup_vs_sequential_with_context": timed[-1]["speedup_vs_sequential_with_context"] if timed else None,
        "speedup_vs_sequential_per_run": timed[-1]["speedup_vs_sequential_per_run"] if timed else None,
        "peak_rss_mb": largest["peak_rss_mb"],
        "size": largest["size"],
        "model": {"dim": dim, "dim_mults": list(model.unet.dim_mults), "parameters": new_model(model).num_parameters},
        "device": device,
        "dtype": dtype,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": mp.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "sizes": results,
    }
    return summary


def to_markdown(summary: dict[str, Any]) -> str:
    """A markdown table of a benchmark summary, for docs/benchmarks.md."""
    rows = [
        "| slide | patches/step | ideal | ratio | network evals/step | s/step | latent px/s | sequential patches/step "
        "| sequential s/step | speed-up | step with context: patches, s | its speed-up | per run | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["sizes"]:
        rows.append(
            f"| {r['size']}² | {r['evals_per_step']:.1f} | {r['ideal_evals_per_step']:.1f} | {r['evals_vs_ideal']:.2f} | "
            f"{r['network_evals_per_step']:.1f} | {r['seconds_per_step']:.2f} | {r['latent_pixels_per_second']:.0f} | "
            f"{r.get('sequential_evals_per_step', float('nan')):.1f} | {r.get('sequential_seconds_per_step', float('nan')):.2f} | "
            f"{r.get('speedup_vs_sequential', float('nan')):.2f} | {r['context_evals_per_step']}, "
            f"{r['context_seconds_per_step']:.2f} | {r.get('speedup_vs_sequential_with_context', float('nan')):.2f} | "
            f"{r.get('speedup_vs_sequential_per_run', float('nan')):.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(rows)


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, default=float)
