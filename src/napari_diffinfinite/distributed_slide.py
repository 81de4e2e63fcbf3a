"""One slide on several processes (GPUs): the generation job split into row bands over ranks.

Launched by ``torchrun`` (or ``diffinfinite generate --nproc N``, which launches the ranks
itself): every rank runs :func:`run_generate_distributed` with the same request.

1. Rank 0 prepares the store with the engine's own :func:`~napari_diffinfinite.engine.run_generate`
   (validation, models, layout, store creation or resume, labels) and stops it where sampling
   begins; it then holds the store's writer lock for the whole group.
2. Every rank loads the models on its own device and reads the saved state; the latent is split
   into bands of whole store-tile rows (:class:`~.sampling.distributed.BandSampler`), one per
   rank, and sampled with a halo exchanged every step. Rank 0 gathers the latent into the
   store's resume state every ``checkpoint_every_s`` seconds, in the single-process format.
3. Every rank decodes its band (with the few latent rows of context its border tiles read,
   received from its neighbours) and writes its level-0 tiles: the store's chunks do not
   straddle bands, so no chunk has two writers.
4. Rank 0 fills the upper pyramid levels from level 0 (their chunks straddle bands), exactly
   as the single-process writer does, records provenance and marks the store complete.

The slide equals the single-process slide with the same seed (to the float tolerance of
batching). A run stopped at any point (a rank killed, the job cancelled) resumes with
``resume=True`` from the last saved state (a group restarted in place by an elastic launcher
passes ``resume`` itself; that path is not verified). Progress is reported by rank 0 only.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
import zarr

from . import engine
from .errors import StoreError
from .progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, report
from .sampling.decode import decode_tiles
from .sampling.distributed import BandSampler, exchange_rows
from .sampling.sampler import RandomPatchSampler
from .slide.masks import CanvasMask, latent_labels
from .slide.pyramid import image_levels
from .slide.store import SlideStore
from .training.distributed import DistributedContext, init_distributed

log = logging.getLogger(__name__)

TILE = 512


def launched_distributed() -> bool:
    """True inside a process group started by torchrun (or ``--nproc``) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank in the torchrun process group (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def _rank_device(device: str | None, ctx: DistributedContext) -> str:
    """This rank's device: its own GPU (``cuda:LOCAL_RANK``) when the job runs on GPUs."""
    return str(ctx.device) if ctx.device.type == "cuda" else (device or "cpu")


def _prepare(request: engine.GenerateRequest, progress: ProgressCallback | None, cancel: CancelToken | None) -> bool:
    """Rank 0: let the engine validate, create or resume the store, and write the labels.

    The engine has no prepare-only call, so its job is stopped at its first sampling or
    decoding event (through its own cancel token); by then the store, canvas, labels and a
    resumable state are written. Returns True when the store is already complete.
    """
    stop = CancelToken()

    def until_sampling(event: ProgressEvent) -> None:
        if event.stage in ("sample", "decode") or (cancel is not None and cancel.cancelled):
            stop.cancel()
        elif progress is not None:
            progress(event)

    try:
        engine.run_generate(request, progress=until_sampling, cancel=stop).close()
        return True
    except Cancelled:
        if cancel is not None and cancel.cancelled:
            raise
        return False
    finally:
        gc.collect()  # the engine's store (and its writer lock) goes with the frames of the exception


@dataclass
class _Saved:
    """What the prepared store records: settings, size, layout canvas and the sampler state."""

    size: tuple[int, int]
    provenance: dict
    canvas: np.ndarray
    latent: np.ndarray | None
    step: int


def _read_saved(path) -> _Saved:
    store = SlideStore.open(path)  # read-only: rank 0 holds the writer lock
    loaded = store.load_state()
    canvas = store.load_canvas()
    if loaded is None or canvas is None:
        raise StoreError(f"{path} has no sampler state to continue from; generate it again with --overwrite")
    arrays, meta = loaded
    return _Saved(tuple(store.shape), store.provenance, canvas, arrays.get("latent"), int(meta.get("step", 0)))


def _broadcast_flag(flag: bool, ctx: DistributedContext) -> bool:
    value = torch.tensor([float(flag)], device=ctx.device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(value, src=0)
    return bool(value.item())


def run_generate_distributed(
    request: engine.GenerateRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    ctx: DistributedContext | None = None,
) -> SlideStore:
    """Generate (or resume) ``request``'s slide with every rank of the torchrun process group.

    Call it on every rank with the same request. Returns the finished store (read-only on
    ranks other than 0). A group restarted in place (``TORCHELASTIC_RESTART_COUNT`` > 0) is
    given ``resume`` (not verified: see :func:`launch`).
    """
    own = ctx is None
    ctx = ctx or init_distributed(request.settings.device or "auto")
    try:
        return _run_ranks(request, ctx, progress, cancel)
    finally:
        if own:
            ctx.close()


def _run_ranks(
    request: engine.GenerateRequest, ctx: DistributedContext, progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> SlideStore:  # fmt: skip
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and not request.overwrite:
        request = replace(request, resume=True)
    # rank 0's engine call validates the request; the other ranks wait for its store
    device = _rank_device(request.settings.device, ctx)
    request = replace(request, settings=replace(request.settings, device=device))
    rank_progress = progress if ctx.is_main else None

    complete = _prepare(request, rank_progress, cancel) if ctx.is_main else False
    if _broadcast_flag(complete, ctx):
        return SlideStore.open(request.path)
    saved = _read_saved(request.path)
    writer = engine.resume_slide(request.path).store if ctx.is_main else None  # the group's writer lock

    p = saved.provenance
    dtype = p.get("dtype") or "float32"
    if request.models is not None:
        models = request.models
        models.image.to(torch.device(device))
    else:
        models = engine.load_models(request.image_model, vae=request.vae, device=device, dtype=dtype)
    config, codec = models.image.config, models.codec
    if (p.get("image_model") or {}).get("sha256") != models.image.sha256:
        raise StoreError(f"cannot continue {request.path}: a different image model wrote it; use the original model")
    sampler = RandomPatchSampler(
        models.image.unet, channels=codec.latent_channels, patch=config.latent_patch, steps=int(p["steps"]),
        omega=float(p["omega"]), eta=float(p["eta"]), seed=int(p["seed"]), batch_size=request.settings.batch_size,
        device=device, dtype=engine.resolve_dtype(dtype), timesteps=config.timesteps,
    )  # fmt: skip
    shape = engine.latent_shape(saved.size, config, codec.scale_factor)
    bands = BandSampler(sampler, shape, rank=ctx.rank, world_size=ctx.world_size, align=TILE // codec.scale_factor)
    band = (
        bands.initial_band()
        if saved.latent is None or saved.step == 0
        else bands.band_of(torch.from_numpy(saved.latent))
    )

    def checkpoint(state) -> None:
        writer.save_state({"latent": state.latent.numpy()},
                          {"step": state.step, "steps": sampler.steps, "decoded_rows": 0, "labels_written": True})  # fmt: skip

    started = time.perf_counter()
    labels = latent_labels(CanvasMask(saved.canvas, saved.size), shape, codec.scale_factor)
    band = bands.run(band, labels, saved.step, progress=rank_progress, cancel=cancel,
                     checkpoint=checkpoint if ctx.is_main else None,
                     checkpoint_every_s=request.settings.checkpoint_every_s)  # fmt: skip
    sampled = time.perf_counter() - started

    _decode_band(band, bands, codec, saved.size, request.path, writer, rank_progress, cancel)
    dist.barrier()
    if not ctx.is_main:
        dist.barrier()
        return SlideStore.open(request.path)
    _fill_upper_levels(writer, rank_progress)
    writer.update_provenance(
        sampler_stats={
            "patches_per_step": float(np.mean(bands.stats.patches_per_step)) if bands.stats.patches_per_step else 0.0,
            "ideal_patches_per_step": shape[0] * shape[1] / sampler.patch**2 / ctx.world_size,
            "network_evals": sampler.denoiser.count.network,
            "batch_size": sampler.batch_size,
            "sampling_seconds": round(sampled, 3),
            "device": str(device),
            "dtype": dtype,
            "ranks": ctx.world_size,
            "halo_bytes_per_step": float(np.mean(bands.stats.halo_bytes_per_step))
            if bands.stats.halo_bytes_per_step
            else 0.0,
        }
    )
    writer.mark_complete(keep_state=request.keep_state)
    dist.barrier()
    return SlideStore.open(request.path)


def _decode_band(band, bands: BandSampler, codec, size, path, writer, progress, cancel) -> None:
    """Decode this rank's rows of store tiles and write their level-0 tiles.

    The tiles of a band read ``codec.context`` latent rows (and, for the cross-fade, the
    neighbouring tile row) beyond it: those rows come from the neighbours' bands.
    """
    scale, tl = codec.scale_factor, TILE // codec.scale_factor
    h = bands.shape[0]
    store_rows = -(-size[0] // TILE)

    def tile_rows(r: int) -> tuple[int, int]:
        b0, b1 = bands.bands.rows(r)
        return b0 // tl, min(-(-b1 // tl), store_rows)

    def needed(r: int) -> tuple[int, int]:
        first, last = tile_rows(r)
        if codec.context == 0:
            return bands.bands.rows(r)
        return max(0, (first - 1) * tl - codec.context), min(h, (last + 1) * tl + codec.context)

    needs = [needed(r) for r in range(bands.bands.count)]
    window, _ = exchange_rows(band, bands.bands, bands.rank, needs)
    first, last = tile_rows(bands.rank)
    level = writer.image_level(0) if writer is not None else _writable_level0(path)

    def write(y0: int, x0: int, rgb: np.ndarray) -> None:
        level[:, y0 : y0 + rgb.shape[1], x0 : x0 + rgb.shape[2]] = rgb

    decode = _band_tile_decoder(band, bands, codec)
    if first < last:
        decode_tiles(
            window.to(bands.device), decode, scale=scale, image_shape=size, write=write, tile=TILE,
            margin=codec.context, first_row=first, last_row=last, latent_origin=needs[bands.rank][0],
            latent_height=h, progress=progress, cancel=cancel,
        )  # fmt: skip


def _band_tile_decoder(band: torch.Tensor, bands: BandSampler, codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The codec's tile decoder for the whole latent, on every rank (collective).

    A decoder that is not local (the SD-2 VAE: GroupNorm statistics and attention over its
    whole input) decodes windows with the statistics of the whole latent's downsampled
    decode (:meth:`VAECodec.tile_decoder`). Rank 0 gathers the whole latent, downsamples it
    and broadcasts the small result, so every band decodes as the single process does. A
    pointwise codec needs none of this.
    """
    if not hasattr(codec, "statistics_latent"):
        return codec.tile_decoder(band)
    whole = bands.gather(band)
    z = codec.statistics_latent(whole).float() if whole is not None else None
    device = bands._collective_device()  # noqa: SLF001 - NCCL broadcasts CUDA tensors, Gloo CPU ones
    shape = torch.tensor(list(z.shape) if z is not None else [0, 0, 0, 0], dtype=torch.long, device=device)
    dist.broadcast(shape, src=0, group=bands.group)
    if z is None:
        z = torch.empty(*shape.tolist(), device=device)
    else:
        z = z.to(device)
    dist.broadcast(z, src=0, group=bands.group)
    return codec.decoder_with_statistics(z.to(bands.device))


def _writable_level0(path) -> zarr.Array:
    """Level 0 of the store, writable, without the writer lock (rank 0 holds it for the group)."""
    level0 = SlideStore.open(path).image_level(0)
    return zarr.open_array(store=str(path), path=level0.path, mode="r+", zarr_format=2)


def _fill_upper_levels(store: SlideStore, progress: ProgressCallback | None) -> None:
    """Rank 0: write every level-0 tile's downsample into levels 1.. (their chunks straddle bands).

    Level k is computed from each level-0 tile exactly as the single-process writer does.
    """
    levels = [store.image_level(k) for k in range(store.num_levels)]
    if len(levels) < 2:
        return
    h, w = store.shape
    tiles = [(y, x) for y in range(0, h, TILE) for x in range(0, w, TILE)]
    for i, (y0, x0) in enumerate(tiles):
        rgb = np.asarray(levels[0][:, y0 : y0 + TILE, x0 : x0 + TILE])
        for k, level in enumerate(image_levels(rgb, len(levels))):
            if k:
                levels[k][:, y0 >> k : (y0 >> k) + level.shape[1], x0 >> k : (x0 >> k) + level.shape[2]] = level
        report(progress, ProgressEvent("pyramid", i + 1, len(tiles), "pyramid levels"))


def launch(argv: list[str], nproc: int, *, max_restarts: int = 0) -> None:
    """Run ``python -m napari_diffinfinite ARGV`` as ``nproc`` ranks on this machine (torchrun's
    elastic launcher, standalone rendezvous). When a rank dies the group is stopped; the saved
    state is kept and ``--resume`` continues it. (``max_restarts`` > 0 restarts the group in
    place; that path hung once in testing on a saturated CPU and is not the default.)"""
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"diffinfinite-{os.getpid()}", rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0", max_restarts=max_restarts, monitor_interval=0.5,
    )  # fmt: skip
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "napari_diffinfinite", *argv)
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {f.local_rank}: exit code {f.exitcode}" for f in exc.failures.values())
        raise StoreError(
            f"the {nproc} processes stopped ({failures}); the state saved so far is kept: run the same command "
            "with --resume to continue"
        ) from None
