"""``diffinfinite bench``: parallel sampler vs the official one-patch-at-a-time loop."""

from __future__ import annotations

import argparse

import torch

from ..bench import dumps, run_benchmark, to_markdown


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark the parallel sampler against the one-patch-at-a-time loop",
        description="Runs both samplers on a random-init network of the official image-model layout and "
        "reports patch evaluations per step vs the ideal H*W/P^2, seconds per step, the speed-up and peak memory.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--sizes", type=_sizes, default=[1024, 4096], help="square slide sizes in px (default 1024,4096)")
    p.add_argument("--sequential-sizes", type=_sizes, help="sizes to also run the sequential loop on (default: all)")
    p.add_argument("--dim", type=int, help="UNet width (official: 256; default 256 on CUDA, 32 on CPU)")
    p.add_argument("--steps", type=int, default=1, help="DDIM steps timed per sampler (default 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-size", type=int)
    return p


def run(args: argparse.Namespace) -> int:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dim = args.dim or (256 if device.startswith("cuda") else 32)
    summary = run_benchmark(
        sorted(args.sizes), dim=dim, steps=args.steps, sequential_sizes=args.sequential_sizes,
        device=device, dtype=args.dtype, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        print(dumps(summary))
    else:
        print(to_markdown(summary))
        print(
            f"\nlargest slide {summary['size']}²: {summary['evals_per_step']:.1f} patch evaluations/step, "
            f"ideal {summary['ideal_evals_per_step']:.1f} ({summary['evals_vs_ideal']:.2f}x); "
            f"speed-up vs sequential: {summary['speedup_vs_sequential']}; peak RSS {summary['peak_rss_mb']:.0f} MB"
        )
    return 0
