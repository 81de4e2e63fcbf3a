"""Scaling figures for docs/benchmarks.md: one slide over ranks, many slides over dask workers.

    python benchmarks/bench_scale.py halo                 # halo bytes per step vs slide width (no model run)
    python benchmarks/bench_scale.py ranks --size 1024    # one slide on 1 and 2 Gloo processes
    python benchmarks/bench_scale.py workers --slides 4   # a manifest on 1 and 2 LocalCluster workers

``halo`` lays the real step grids (official layout: SD-2 VAE latents, 4 channels, 64-px latent
patches, 250 steps with cell context) over slides of each width and counts the rows each band
border exchanges; ``ranks`` runs the band sampler with the demo image architecture
(random init) and reports seconds and halo bytes per step; ``workers`` runs
``generate_many`` on the tiny test model.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def halo(widths_px: list[int], ranks: int, steps: int, dtype_bytes: int) -> list[dict]:
    from napari_diffinfinite.sampling.distributed import Bands, window_rows
    from napari_diffinfinite.sampling.grid import step_grid
    from napari_diffinfinite.sampling.noise import grid_offset
    from napari_diffinfinite.sampling.sampler import default_context, has_context
    from napari_diffinfinite.sampling.schedule import Schedule

    patch, channels, scale = 64, 4, 8
    rows = []
    for width in widths_px:
        w = width // scale
        h = max(ranks * 64, 4 * 64)  # the halo does not depend on the height
        bands = Bands.split(h, ranks, 64)
        sent = []
        schedule = Schedule(steps)
        for k in range(steps):
            context = default_context(patch) if has_context(schedule, k) else 0
            grid = step_grid((h, patch), patch, grid_offset(0, k, patch), context)  # one column: rows only
            needs = [window_rows(grid, bands.rows(r)) for r in range(ranks)]
            border = 0  # rows crossing the border between bands 0 and 1, both directions
            b0, b1 = bands.rows(0)
            border += max(0, needs[0][1] - b1) + max(0, b1 - needs[1][0])
            sent.append(border * w * channels * dtype_bytes)
        rows.append({"width_px": width, "latent_width": w, "bytes_per_border_per_step_mean": float(np.mean(sent)),
                     "bytes_per_border_per_step_max": int(np.max(sent))})  # fmt: skip
    return rows


def _rank(rank, world, port, size, steps, out, device_type):
    from napari_diffinfinite.demo import demo_image_config
    from napari_diffinfinite.model.pretrained import new_model
    from napari_diffinfinite.sampling.distributed import BandSampler
    from napari_diffinfinite.sampling.sampler import RandomPatchSampler

    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = new_model(demo_image_config(), seed=0).to(device)
    c = model.config
    sampler = RandomPatchSampler(model.unet, channels=c.unet.channels, patch=c.latent_patch, steps=steps, omega=3.0,
                                 seed=1, batch_size=16, device=device)  # fmt: skip
    shape = (size // c.scale_factor, size // c.scale_factor)
    bands = BandSampler(sampler, shape, rank=rank, world_size=world, align=512 // c.scale_factor)
    labels = np.ones(shape, np.uint8)
    labels[:, shape[1] // 2 :] = 2
    dist.barrier()
    started = time.perf_counter()
    bands.run(bands.initial_band(), labels, 0)
    dist.barrier()
    wall = time.perf_counter() - started
    Path(out, f"rank{rank}.json").write_text(json.dumps({"wall": wall, **bands.stats.__dict__}))
    dist.destroy_process_group()


def ranks(size: int, steps: int, worlds: list[int], device_type: str = "cpu") -> list[dict]:
    results = []
    for world in worlds:
        with tempfile.TemporaryDirectory() as out, socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            mp.start_processes(
                _rank, args=(world, port, size, steps, out, device_type), nprocs=world, start_method="spawn"
            )
            per_rank = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
        results.append({
            "processes": world, "slide_px": size, "steps": steps,
            "seconds_per_step": max(r["wall"] for r in per_rank) / steps,
            "patches_per_step_per_rank": [float(np.mean(r["patches_per_step"])) for r in per_rank],
            "halo_bytes_per_step_per_rank": [float(np.mean(r["halo_bytes_per_step"])) for r in per_rank],
        })  # fmt: skip
    return results


def workers(slides: int, size: int, steps: int, counts: list[int]) -> list[dict]:
    from napari_diffinfinite import engine
    from napari_diffinfinite.fleet import generate_many
    from napari_diffinfinite.testing import write_tiny_model

    results = []
    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_model(Path(folder) / "model")
        for count in counts:
            requests = [
                engine.GenerateRequest(out=Path(folder) / f"w{count}-{i}.zarr", size=(size, size), image_model=str(model),
                                       layout=engine.LayoutSource(label=1),
                                       settings=engine.GenerateSettings(seed=i, steps=steps, device="cpu"))
                for i in range(slides)
            ]  # fmt: skip
            started = time.perf_counter()
            report = generate_many(requests, workers=count)
            results.append({"workers": count, "slides": slides, "slide_px": size, "steps": steps,
                            "seconds": time.perf_counter() - started, "done": len(report.done)})  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    h = sub.add_parser("halo")
    h.add_argument("--widths", default="10000,25000,50000,100000")
    h.add_argument("--steps", type=int, default=250)
    h.add_argument("--dtype-bytes", type=int, default=4, help="4 = float32 latent, 2 = bf16")
    r = sub.add_parser("ranks")
    r.add_argument("--size", type=int, default=1024)
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--processes", default="1,2")
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per process, NCCL")
    w = sub.add_parser("workers")
    w.add_argument("--slides", type=int, default=4)
    w.add_argument("--size", type=int, default=512)
    w.add_argument("--steps", type=int, default=4)
    w.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if args.what == "halo":
        out = halo([int(v) for v in args.widths.split(",")], 2, args.steps, args.dtype_bytes)
    elif args.what == "ranks":
        out = ranks(args.size, args.steps, [int(v) for v in args.processes.split(",")], args.device)
    else:
        out = workers(args.slides, args.size, args.steps, [int(v) for v in args.workers.split(",")])
    print(json.dumps(out, indent=1))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
