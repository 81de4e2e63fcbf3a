"""GPU measurement: UNet throughput and generation end to end, with the time split.

1. **UNet sweep.** The official-size image UNet (random weights, dim 256; 199 GFLOP per
   64 x 64 latent patch evaluation) for float32 / bfloat16 autocast, batch sizes 8 to 256,
   ``torch.compile`` off and on: evaluations per second and the share of the GPU's bf16
   dense peak (``--peak-tflops``, 989 for an H200) they reach.
2. **Sampler overhead** on the device: ``bench --overhead`` at the generation sizes.
3. **Generation end to end** (``diffinfinite generate``) at 8192 and 16384 px, 50 steps,
   bf16, one label everywhere, with a random-init SD-2-architecture VAE: seconds, split
   into sampler overhead (2 x patches), UNet (sampling minus overhead) and decode (the rest).
4. **Tiled decode fidelity** of the SD-2-architecture VAE (96 x 96 latent, 256 px tiles).

Writes one JSON file and prints a markdown table. ``--tiny`` runs every part at toy sizes
on whatever device there is (the CPU fallback that checks the script itself).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import zarr

from .. import cli
from ..model.pretrained import new_model, save_pretrained
from .decode import sd2_vae, tiled_vs_whole
from .overhead import run_overhead
from .sampler import bench_model_config

GFLOP_PER_EVAL = 199.0  # official image UNet (dim 256), one 64 x 64 latent patch
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@torch.no_grad()
def unet_sweep(dim: int, batches: list[int], dtypes: list[str], compiles: list[bool], device: str, repeats: int,
               peak_tflops: float, gflop_per_eval: float) -> list[dict[str, Any]]:  # fmt: skip
    """Evaluations per second of the image UNet for every (dtype, compile, batch)."""
    model = new_model(bench_model_config(dim))
    unet = model.unet.to(device).eval()
    patch = model.config.latent_patch
    on_cuda = device.startswith("cuda")
    if on_cuda:
        unet.to(memory_format=torch.channels_last)
    rows = []
    for dtype in dtypes:
        for compiled in compiles:
            network = torch.compile(unet, mode="max-autotune-no-cudagraphs" if on_cuda else None) if compiled else unet
            for batch in batches:
                row: dict[str, Any] = {"dtype": dtype, "compile": compiled, "batch": batch}
                try:
                    x = torch.randn(batch, 4, patch, patch, device=device)
                    if on_cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    t = torch.randint(0, 1000, (batch,), device=device)
                    mask = torch.randint(0, 3, (batch, 1, patch, patch), device=device).float()
                    with torch.autocast(device.split(":")[0], dtype=_DTYPES[dtype], enabled=dtype != "float32"):
                        for _ in range(2):  # warm-up (and compilation)
                            network(x, t, mask)
                        if on_cuda:
                            torch.cuda.synchronize()
                        started = time.perf_counter()
                        for _ in range(repeats):
                            network(x, t, mask)
                        if on_cuda:
                            torch.cuda.synchronize()
                    seconds = time.perf_counter() - started
                    evals = batch * repeats / seconds
                    row.update(evals_per_s=evals, tflops=evals * gflop_per_eval / 1000,
                               percent_of_bf16_peak=100 * evals * gflop_per_eval / 1000 / peak_tflops)  # fmt: skip
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    if not _is_oom(exc):
                        raise
                    row["error"] = "out of memory"
                    if on_cuda:
                        torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def generate_end_to_end(sizes: list[int], dim: int, steps: int, device: str, dtype: str, vae_blocks: tuple[int, ...],
                        overhead: dict[int, float], workdir: Path) -> list[dict[str, Any]]:  # fmt: skip
    """``diffinfinite generate`` at each size; seconds split into overhead / UNet / decode."""
    model_dir = save_pretrained(new_model(bench_model_config(dim)), workdir / "model", overwrite=True)
    vae_dir = workdir / "vae"
    sd2_vae(vae_blocks).save_pretrained(vae_dir)
    rows = []
    for size in sizes:
        out = workdir / f"slide-{size}.zarr"
        argv = ["generate", "--out", str(out), "--size", f"{size}x{size}", "--model", str(model_dir), "--vae", str(vae_dir),
                "--label", "1", "--steps", str(steps), "--device", device, "--dtype", dtype, "--overwrite", "-q"]  # fmt: skip
        started = time.perf_counter()
        code = cli.main(argv)
        total = time.perf_counter() - started
        if code != 0:
            rows.append({"size": size, "error": f"generate exited with {code}"})
            continue
        stats = dict(zarr.open_group(str(out), mode="r").attrs).get("diffinfinite", {}).get("sampler_stats", {})
        sampling = float(stats.get("sampling_seconds", float("nan")))
        patches = float(stats.get("patches_per_step", float("nan"))) * steps
        sampler_overhead = overhead.get(size, float("nan")) * patches / 1000
        rows.append({
            "size": size, "steps": steps, "dtype": dtype, "seconds": total, "sampling_seconds": sampling,
            "sampler_overhead_seconds": sampler_overhead, "unet_seconds": sampling - sampler_overhead,
            "decode_seconds": total - sampling, "network_evals": stats.get("network_evals"),
            "batch_size": stats.get("batch_size"),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| dtype | compile | batch | evals/s | TFLOP/s | % bf16 peak |", "|---|---|---|---|---|---|"]
    for r in result["unet"]:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['compile']} | {r['batch']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['dtype']} | {r['compile']} | {r['batch']} | {r['evals_per_s']:.1f} | "
                         f"{r['tflops']:.1f} | {r['percent_of_bf16_peak']:.1f} |")  # fmt: skip
    lines += ["", "| slide | s | sampling s | overhead s | UNet s | decode s |", "|---|---|---|---|---|---|"]
    for r in result["generate"]:
        if "error" in r:
            lines.append(f"| {r['size']}² | {r['error']} | | | | |")
        else:
            lines.append(f"| {r['size']}² | {r['seconds']:.1f} | {r['sampling_seconds']:.1f} | "
                         f"{r['sampler_overhead_seconds']:.1f} | {r['unet_seconds']:.1f} | {r['decode_seconds']:.1f} |")  # fmt: skip
    d = result["decode"]
    lines += ["", f"tiled vs whole decode ({d['latent']}² latent, {d['tile']} px tiles): mean "
              f"{d['mean_grey_difference']:.3f}, max {d['max_grey_difference']:.1f} grey levels"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GPU benchmark of the sampler, the UNet and the decoder")
    p.add_argument("--out", default="gpu-benchmark.json", help="JSON file to write")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (checks the script on any machine)")
    p.add_argument(
        "--quick", action="store_true",
        help="no torch.compile runs and batches 32/128/256 only: fits a 10-minute GPU budget (compiling dominates)",
    )  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H200: 989)")
    p.add_argument("--workdir", help="folder for models and slides (default: a temporary folder)")
    args = p.parse_args(argv)
    tiny = args.tiny
    dim = 8 if tiny else 256
    batches = [2, 4] if tiny else [32, 128, 256] if args.quick else [8, 16, 32, 64, 128, 256]
    compiles = [False] if tiny or args.quick else [False, True]
    sizes = [512, 1024] if tiny else [8192, 16384]
    steps = 2 if tiny else 50
    vae_blocks = (32, 32, 32, 32) if tiny else (128, 256, 512, 512)
    result: dict[str, Any] = {
        "device": args.device, "tiny": tiny, "quick": args.quick, "gflop_per_eval": GFLOP_PER_EVAL, "peak_tflops": args.peak_tflops,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
    }  # fmt: skip
    result["unet"] = unet_sweep(dim, batches, ["float32", "bfloat16"], compiles, args.device, 2 if tiny else 10,
                                args.peak_tflops, GFLOP_PER_EVAL)  # fmt: skip
    result["overhead"] = run_overhead(sizes, steps=1 if tiny else 3, device=args.device, batch_size=64 if tiny else 256)
    overhead = {r["size"]: r["ms_per_patch"] for r in result["overhead"]["sizes"]}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        result["generate"] = generate_end_to_end(sizes, dim, steps, args.device, "float32" if tiny else "bfloat16",
                                                 vae_blocks, overhead, workdir)  # fmt: skip
    result["decode"] = tiled_vs_whole(32 if tiny else 96, 128 if tiny else 256, blocks=vae_blocks, device=args.device)
    Path(args.out).write_text(json.dumps(result, default=float, indent=1))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
