"""The embedded demo networks' forward pass on the CPU, network-path variants side by side.

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_network.py --rounds 6 --out build/bench-cpu-network.json

What the README job spends its time on (about 90 % of it in these forward passes): one batch
of 16 patch evaluations of the demo image model (32 x 32 x 48 latent) and of the demo mask
model, timed for each variant in interleaved rounds (A B C D, A B C D, ...) so that a change
of load on a shared machine hits every variant alike; the medians are compared.

Variants: memory format (contiguous NCHW or channels-last, the sampler's default on CPU since
session 10) x channel layer norm (the fused ``F.layer_norm`` of ``model/blocks.py``, or the
separate var / mean / arithmetic it replaced, reproduced here as the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from napari_diffinfinite.model import blocks
from napari_diffinfinite.model.pretrained import load_model

DEMO = Path(__file__).resolve().parents[1] / "src" / "napari_diffinfinite" / "data" / "demo"


def _unfused_norm(self: blocks.ChannelLayerNorm, x: torch.Tensor) -> torch.Tensor:
    """The channel layer norm before session 10 (the reference)."""
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=1, keepdim=True)
    return (x - mean) * (var + blocks._eps(x.dtype)).rsqrt() * self.g  # noqa: SLF001


@contextmanager
def _norm(fused: bool):
    fused_forward = blocks.ChannelLayerNorm.forward
    if not fused:
        blocks.ChannelLayerNorm.forward = _unfused_norm
    try:
        yield
    finally:
        blocks.ChannelLayerNorm.forward = fused_forward


def _inputs(kind: str, unet: torch.nn.Module, batch: int, patch: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    channels = unet.config.channels
    x = torch.randn(batch, channels, patch, patch, generator=g)
    t = torch.full((batch,), 500)
    if kind == "image":  # a patch of three classes, as at a layout's borders
        return x, t, torch.randint(1, 4, (batch, 1, patch, patch), generator=g)
    return x, t, torch.ones(batch, dtype=torch.long)


def bench(kind: str, batch: int, rounds: int, calls: int) -> list[dict]:
    model = load_model(DEMO / kind)
    unet = model.unet.eval()
    x, *rest = _inputs(kind, unet, batch, model.config.latent_patch)
    variants = [(cl, fused) for cl in (False, True) for fused in (False, True)]
    seconds: dict[tuple[bool, bool], list[float]] = {v: [] for v in variants}
    outputs = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for cl, fused in variants:
                unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                xx = x.contiguous(memory_format=torch.channels_last) if cl else x
                with _norm(fused):
                    outputs[(cl, fused)] = unet(xx, *rest)  # warm-up (oneDNN primitive cache)
                    started = time.perf_counter()
                    for _ in range(calls):
                        unet(xx, *rest)
                    seconds[(cl, fused)].append((time.perf_counter() - started) / calls)
    reference = outputs[(False, False)]
    rows = []
    for cl, fused in variants:
        median = statistics.median(seconds[(cl, fused)])
        rows.append({
            "model": kind, "batch": batch, "channels_last": cl, "fused_layer_norm": fused,
            "ms_per_batch": round(1000 * median, 1), "ms_per_evaluation": round(1000 * median / batch, 2),
            "speedup": round(statistics.median(seconds[(False, False)]) / median, 2),
            "max_abs_difference": float((outputs[(cl, fused)] - reference).abs().max()),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per variant (median reported)")
    p.add_argument("--calls", type=int, default=4, help="timed forward calls per round")
    p.add_argument("--batch", type=int, default=16, help="evaluations per call (the sampler's CPU batch)")
    p.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = [row for kind in ("image", "mask") for row in bench(kind, args.batch, args.rounds, args.calls)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| model | channels-last | fused layer norm | ms / batch | ms / evaluation | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['channels_last']} | {r['fused_layer_norm']} | {r['ms_per_batch']} | "
              f"{r['ms_per_evaluation']} | {r['speedup']} | {r['max_abs_difference']:.1e} |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "load": os.getloadavg()}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
