"""``diffinfinite bench``: the sampler's benchmarks (code in :mod:`napari_diffinfinite.benchmarks`).

* default: the parallel sampler against the official one-patch-at-a-time loop;
* ``--overhead``: milliseconds of the sampler's own work per patch, with a zero-cost network.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..benchmarks.overhead import OVERHEAD_SIZES, run_overhead
from ..benchmarks.sampler import dumps, run_benchmark, to_markdown


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark the parallel sampler (against the one-patch-at-a-time loop, or its own overhead)",
        description="Runs both samplers on a random-init network of the official image-model layout and "
        "reports patch evaluations per step vs the ideal H*W/P^2, seconds per step, the speed-up and peak memory. "
        "With --overhead: the sampler alone (a zero-cost network), ms of sampler work per patch.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument(
        "--overhead", action="store_true",
        help=f"time the sampler's own work per patch with a zero-cost network (default sizes "
        f"{','.join(map(str, OVERHEAD_SIZES))}; latent only, no decode)",
    )  # fmt: skip
    p.add_argument("--sizes", type=_sizes, help="square slide sizes in px (default 1024,4096)")
    p.add_argument("--sequential-sizes", type=_sizes, help="sizes to also run the sequential loop on (default: all)")
    p.add_argument("--dim", type=int, help="UNet width (official: 256; default 256 on CUDA, 32 on CPU)")
    p.add_argument("--steps", type=int, help="DDIM steps timed per sampler (default 1; --overhead: 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-size", type=int, help="network evaluations per call (--overhead: default 64)")
    return p


def _overhead(args: argparse.Namespace, device: str) -> int:
    result = run_overhead(
        sorted(args.sizes or OVERHEAD_SIZES), steps=args.steps or 2, device=device, batch_size=args.batch_size or 64
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print("| slide | latent | patches/step | ms/patch | ms/step |\n|---|---|---|---|---|")
    for r in result["sizes"]:
        print(
            f"| {r['size']}² | {r['latent'][0]}² | {r['patches_per_step']:.0f} | {r['ms_per_patch']:.3f} | "
            f"{r['ms_per_step']:.1f} |"
        )
    return 0


def _x(speedup: float | None) -> str:
    return "not timed" if speedup is None else f"{speedup:.2f}x"


def run(args: argparse.Namespace) -> int:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.overhead:
        return _overhead(args, device)
    dim = args.dim or (256 if device.startswith("cuda") else 32)
    summary = run_benchmark(
        sorted(args.sizes or [1024, 4096]), dim=dim, steps=args.steps or 1, sequential_sizes=args.sequential_sizes,
        device=device, dtype=args.dtype, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        print(dumps(summary))
    else:
        print(to_markdown(summary))
        print(
            f"\nlargest slide {summary['size']}²: {summary['evals_per_step']:.1f} patch evaluations/step, "
            f"ideal {summary['ideal_evals_per_step']:.1f} ({summary['evals_vs_ideal']:.2f}x); "
            f"speed-up vs sequential: {_x(summary['speedup_vs_sequential'])} (step 0), "
            f"{_x(summary['speedup_vs_sequential_with_context'])} (a step with cell context), "
            f"{_x(summary['speedup_vs_sequential_per_run'])} over a 250-step run; peak RSS {summary['peak_rss_mb']:.0f} MB"
        )
    return 0
