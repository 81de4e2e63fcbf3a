"""Browsing benchmark: milliseconds to read one 1024 x 1024 screen view per pyramid level.

Builds (or reuses) a 32768 x 32768 slide store, then reads square views at random,
chunk-unaligned positions of every level exactly the way the napari layers do: through
:class:`~napari_diffinfinite.widgets._layers.ChannelLastArray` over the zarr level (no dask,
no cache), transposed to (y, x, c). The labels pyramid is read the same way.

The store is filled quickly: each level's chunks hold one of a small set of synthetic
H&E-like textured tiles (realistic compressibility, unlike constant tiles), encoded once
and copied file by file. Level k is then *not* the 2**k downsample of level 0, which does
not matter for read cost.
``--via-write-tile`` builds it the faithful way through ``SlideStore.write_tile`` (slower:
every tile updates every level).

    python benchmarks/bench_browse.py                       # build in a temp dir, measure, delete
    python benchmarks/bench_browse.py --store /tmp/big.zarr --keep   # reuse on later runs

Prints a JSON record and markdown table rows. Every read decompresses its chunks (zarr
keeps no chunk cache); the files themselves come from the OS page cache when the store was
just written or read before, as in an interactive session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from napari_diffinfinite.slide.masks import CanvasMask
from napari_diffinfinite.slide.store import SlideStore
from napari_diffinfinite.widgets._layers import ChannelLastArray

TILE = 512
NAMES = ["unknown", "tumour", "stroma", "background"]
COLORS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (200, 200, 200)]


def textured_tiles(count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """(3, 512, 512) uint8 tiles of smooth pink/purple texture plus fine noise."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        coarse = rng.random((3, 17, 17))
        # bilinear upsampling of a coarse random field: tissue-like blobs
        t = np.linspace(0, 16, TILE)
        i0 = np.minimum(t.astype(int), 15)
        f = (t - i0)[None, :]
        rows = coarse[:, i0, :] * (1 - f.T)[None] + coarse[:, i0 + 1, :] * f.T[None]
        field = rows[:, :, i0] * (1 - f)[None] + rows[:, :, i0 + 1] * f[None]
        noise = rng.normal(0, 6, (3, TILE, TILE))
        base = np.array([215, 140, 190])[:, None, None]
        amp = np.array([35, 70, 45])[:, None, None]
        rgb = base - amp * field + noise
        tiles.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return tiles


def build_store(path: Path, size: int, via_write_tile: bool, threads: int) -> float:
    """Write a ``size`` x ``size`` slide store at ``path``; returns seconds taken.

    Default: every level gets the textured tiles encoded once through zarr (into its first
    chunks), and the remaining chunk files are byte copies of those (the store's chunk keys
    are "<level>/0/<row>/<col>"): each chunk is a real, distinct file holding realistically
    compressed data, written at disk speed instead of compression speed.
    """
    start = time.perf_counter()
    store = SlideStore.create(
        path, (size, size), class_names=NAMES, class_colors=COLORS,
        provenance={"benchmark": "bench_browse"}, overwrite=True,
    )  # fmt: skip
    tiles = textured_tiles()
    if via_write_tile:
        for y0 in range(0, size, TILE):
            for x0 in range(0, size, TILE):
                store.write_tile(y0, x0, tiles[(y0 // TILE * 7 + x0 // TILE) % len(tiles)])
    else:
        copies = []
        for k, (h, w) in enumerate(store.level_shapes):
            level = store.image_level(k)
            ny, nx = -(-h // TILE), -(-w // TILE)
            seeds: dict[int, Path] = {}
            for cy in range(ny):
                for cx in range(nx):
                    which = (cy * 7 + cx) % len(tiles)
                    chunk = path / str(k) / "0" / str(cy) / str(cx)
                    if which not in seeds:
                        y0, x0 = cy * TILE, cx * TILE
                        th, tw = min(TILE, h - y0), min(TILE, w - x0)
                        level[:, y0 : y0 + th, x0 : x0 + tw] = tiles[which][:, :th, :tw]
                        if not chunk.is_file():
                            raise RuntimeError(f"unexpected chunk layout: {chunk} was not written")
                        seeds[which] = chunk
                    else:
                        copies.append((seeds[which], chunk))

        def copy(job: tuple[Path, Path]) -> None:
            src, dst = job
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(copy, copies))
    canvas = np.random.default_rng(1).integers(1, len(NAMES), (64, 64)).astype(np.uint8)
    store.write_labels(CanvasMask(canvas, (size, size)))
    store.mark_complete()
    return time.perf_counter() - start


def measure(path: Path, view: int, repeats: int, seed: int = 0) -> list[dict]:
    """Per level: ms per view (median, p95, max) for the image and the labels."""
    store = SlideStore.open(path)
    rng = np.random.default_rng(seed)
    rows = []
    for k, (h, w) in enumerate(store.level_shapes):
        image = ChannelLastArray(store.image_level(k))
        labels = store.label_level(k)
        vh, vw = min(view, h), min(view, w)
        positions = [(int(rng.integers(0, h - vh + 1)), int(rng.integers(0, w - vw + 1))) for _ in range(repeats)]
        times, label_times = [], []
        for y, x in positions:
            t = time.perf_counter()
            pixels = np.asarray(image[y : y + vh, x : x + vw])
            times.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            np.asarray(labels[y : y + vh, x : x + vw])
            label_times.append((time.perf_counter() - t) * 1e3)
        assert pixels.shape == (vh, vw, 3)
        chunks = (-(-(vh + TILE - 1) // TILE)) * (-(-(vw + TILE - 1) // TILE))
        rows.append({
            "level": k,
            "level_shape": [h, w],
            "view": [vh, vw],
            "max_chunks_per_view": min(chunks, (-(-h // TILE)) * (-(-w // TILE))),
            "image_ms_median": round(statistics.median(times), 2),
            "image_ms_p95": round(float(np.percentile(times, 95)), 2),
            "image_ms_max": round(max(times), 2),
            "labels_ms_median": round(statistics.median(label_times), 2),
            "views": len(positions),
        })  # fmt: skip
    return rows


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import zarr

        info["zarr"] = zarr.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32768, help="slide side in pixels")
    parser.add_argument("--view", type=int, default=1024, help="screen view side in pixels")
    parser.add_argument("--repeats", type=int, default=20, help="view positions per level")
    parser.add_argument("--store", type=Path, help="store path (reused if it exists)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--via-write-tile", action="store_true", help="build with SlideStore.write_tile")
    parser.add_argument("--threads", type=int, default=2, help="threads copying chunk files")
    args = parser.parse_args(argv)

    tmp = None
    path = args.store
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-browse-"))
        path = tmp / f"slide-{args.size}.zarr"
    build_s = None
    try:
        if not (path.is_dir() and SlideStore.open(path).shape == (args.size, args.size)):
            build_s = round(build_store(path, args.size, args.via_write_tile, args.threads), 1)
        disk_mb = round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)
        rows = measure(path, args.view, args.repeats)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    record = {
        "benchmark": "browse",
        "slide": [args.size, args.size],
        "view": args.view,
        "store_mb": disk_mb,
        "build_s": build_s,
        "build": "write_tile" if args.via_write_tile else "textured chunks, encoded once, copied",
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "levels": rows,
    }
    print(json.dumps(record, indent=2))
    print()
    print("| level | level size (px) | view (px) | chunks/view (max) | image median (ms) "
          "| image p95 (ms) | image max (ms) | labels median (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | {r['level_shape'][0]} x {r['level_shape'][1]} | {r['view'][0]} x {r['view'][1]} "
              f"| {r['max_chunks_per_view']} | {r['image_ms_median']} | {r['image_ms_p95']} "
              f"| {r['image_ms_max']} | {r['labels_ms_median']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
