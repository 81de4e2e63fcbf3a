"""One latent across several processes: row bands, one per rank, with a halo exchanged per step.

The random-patch step is a stencil: a patch's network window reaches at most one patch
height beyond the cell it owns. So the latent is split into bands of whole rows (one per
rank, aligned to ``align`` rows, in practice one row of 512 px store tiles); every step each
rank

1. lays the step's shifted patch grid over the whole canvas (keyed by (seed, step): every rank
   computes the same grid without talking to the others),
2. receives from its neighbours exactly the rows its patches' windows read outside its band
   (the halo; at most one patch height on each side, about one patch height per band border
   in total),
3. denoises the patches whose owned cells intersect its band and writes the owned rows that
   lie in its band (a cell that straddles a band border is evaluated by both ranks: the
   border term of the parallel split, one patch row per border per step),
4. draws its band's DDIM noise from the keyed noise field.

Every random number is keyed by position, so the result equals the single-process run with
the same seed (to the float tolerance of batching). The per-step pieces are the single-process
sampler's (:class:`~.sampler.RandomPatchSampler`: its step grid with cell context, its
evaluation plan and batches, the guided denoiser, the latent canvas, keyed noise); this module
adds the band bookkeeping and the exchange, through ``torch.distributed`` point-to-point calls
(NCCL on GPUs, Gloo on CPUs). A band's step is the sampler's own step over the band's patches
on the window of rows they read (``RandomPatchSampler._step``), so both share one batch loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..errors import SettingsError
from ..progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, report
from .canvas import LatentCanvas
from .grid import StepGrid
from .noise import INITIAL_STEP, normal_field
from .sampler import RandomPatchSampler, SamplerState

Rows = tuple[int, int]


@dataclass(frozen=True)
class Bands:
    """Rows ``[starts[r], starts[r + 1])`` of a canvas of ``height`` rows belong to rank ``r``."""

    starts: tuple[int, ...]

    @classmethod
    def split(cls, height: int, parts: int, align: int) -> Bands:
        """``parts`` bands of whole ``align``-row blocks, as even as possible (the last may be short).

        Band borders fall on multiples of ``align`` so that the store tiles decoded from a band
        (``align`` latent rows = one row of store tiles) are written by one rank only.
        """
        blocks = -(-height // align)
        if parts < 1:
            raise SettingsError(f"the number of processes must be at least 1, got {parts}")
        if parts > blocks:
            raise SettingsError(
                f"the slide has {blocks} row(s) of store tiles, too few for {parts} processes (one row each at "
                f"least); use at most {blocks} processes or a taller slide"
            )
        base, extra = divmod(blocks, parts)
        edges = [0]
        for r in range(parts):
            edges.append(edges[-1] + base + (r < extra))
        return cls(tuple(min(e * align, height) for e in edges))

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    @property
    def height(self) -> int:
        return self.starts[-1]

    def rows(self, rank: int) -> Rows:
        return self.starts[rank], self.starts[rank + 1]


def window_rows(grid: StepGrid, band: Rows) -> Rows:
    """The rows read by the step's patches whose owned cells intersect ``band`` (band plus halo)."""
    b0, b1 = band
    mine = (grid.own_y0 < b1) & (grid.own_y1 > b0)
    tops = grid.window_y[mine]
    return min(int(tops.min()), b0), max(int(tops.max()) + grid.patch, b1)


def exchange_rows(
    band_latent: torch.Tensor, bands: Bands, rank: int, needs: Sequence[Rows], group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, int]:
    """Rows ``needs[rank]`` of the distributed latent, assembled on this rank; and bytes sent.

    Every rank holds its band (``band_latent``: (C, band rows, W)) and knows every rank's need,
    so it sends each other rank the part of its band that rank needs and receives its own need
    from the bands that hold it (neighbours, or further when bands are thinner than the halo).
    """
    lo, hi = needs[rank]
    b0, b1 = bands.rows(rank)
    channels, _, width = band_latent.shape
    out = torch.empty(channels, hi - lo, width, dtype=band_latent.dtype, device=band_latent.device)
    out[:, b0 - lo : b1 - lo] = band_latent
    requests, sent, received = [], 0, []
    for other in range(bands.count):
        if other == rank:
            continue
        o0, o1 = bands.rows(other)
        # what the other rank needs from my band
        s0, s1 = max(needs[other][0], b0), min(needs[other][1], b1)
        if s0 < s1:
            chunk = band_latent[:, s0 - b0 : s1 - b0].contiguous()
            requests.append(dist.isend(chunk, other, group=group))
            sent += chunk.numel() * chunk.element_size()
        # what I need from the other rank's band
        r0, r1 = max(lo, o0), min(hi, o1)
        if r0 < r1:
            buffer = torch.empty(channels, r1 - r0, width, dtype=band_latent.dtype, device=band_latent.device)
            requests.append(dist.irecv(buffer, other, group=group))
            received.append((r0, buffer))
    for request in requests:
        request.wait()
    for r0, buffer in received:
        out[:, r0 - lo : r0 - lo + buffer.shape[1]] = buffer
    return out, sent


@dataclass
class BandStats:
    """What one rank did: patch evaluations and halo bytes sent per step, seconds per step."""

    patches_per_step: list[int] = field(default_factory=list)
    halo_bytes_per_step: list[int] = field(default_factory=list)
    seconds_per_step: list[float] = field(default_factory=list)


class BandSampler:
    """Runs a :class:`RandomPatchSampler` on this rank's band of a latent split over ranks.

    ``sampler`` holds the model, schedule, seed and guided denoiser (identical on every rank);
    ``shape`` is the whole latent's (h, w); ``align`` the band alignment in latent rows.
    """

    def __init__(
        self,
        sampler: RandomPatchSampler,
        shape: tuple[int, int],
        *,
        rank: int,
        world_size: int,
        align: int,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        self.sampler = sampler
        self.shape = (int(shape[0]), int(shape[1]))
        self.rank, self.group = rank, group
        self.bands = Bands.split(self.shape[0], world_size, align)
        self.band = self.bands.rows(rank)
        self.stats = BandStats()

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    def initial_band(self) -> torch.Tensor:
        """This band's rows of the keyed initial noise x_T (C, band rows, w)."""
        b0, b1 = self.band
        return normal_field(self.sampler.seed, INITIAL_STEP, self.sampler.channels, b0, b1, 0, self.shape[1])

    def band_of(self, latent: torch.Tensor) -> torch.Tensor:
        """This band's rows of a whole latent (C, h, w), e.g. a state loaded for resume."""
        b0, b1 = self.band
        return latent[:, b0:b1].clone()

    def gather(self, band_latent: torch.Tensor) -> torch.Tensor | None:
        """The whole latent on rank 0 (None elsewhere): for checkpoints, in the single-process format."""
        tallest = max(b - a for a, b in zip(self.bands.starts, self.bands.starts[1:]))
        channels, rows, width = band_latent.shape
        padded = torch.zeros(channels, tallest, width, dtype=band_latent.dtype, device=band_latent.device)
        padded[:, :rows] = band_latent
        pieces = [torch.empty_like(padded) for _ in range(self.bands.count)] if self.rank == 0 else None
        dist.gather(padded, pieces, dst=0, group=self.group)
        if pieces is None:
            return None
        return torch.cat([p[:, : b - a] for p, a, b in zip(pieces, self.bands.starts, self.bands.starts[1:])], 1).cpu()

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag True on every rank if it is True on any (cancel/checkpoint decisions)."""
        values = torch.tensor([float(f) for f in flags], device=self._collective_device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in values.tolist()]

    def _collective_device(self) -> torch.device:
        backend = dist.get_backend(self.group)
        return self.device if backend == "nccl" else torch.device("cpu")

    @torch.no_grad()
    def run(
        self,
        band_latent: torch.Tensor,
        labels: np.ndarray,
        step: int,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        checkpoint: Callable[[SamplerState], None] | None = None,
        checkpoint_every_s: float = 60.0,
        stop_at: int | None = None,
    ) -> torch.Tensor:
        """Advance this band from the start of ``step`` to the end of the schedule.

        ``labels``: the (h, w) uint8 label mask of the whole latent. ``checkpoint`` is called on
        rank 0 with the whole gathered latent at step boundaries: every ``checkpoint_every_s``
        seconds (rank 0's clock), at the end, and when any rank is cancelled (then every rank
        raises :class:`Cancelled`). ``progress`` is reported by rank 0 only. ``stop_at`` ends
        the run at the start of that step (tests, benchmarks).
        """
        s = self.sampler
        h, w = self.shape
        b0, b1 = self.band
        if labels.shape != self.shape:
            raise ValueError(f"label mask {labels.shape} does not match the latent {self.shape}")
        if tuple(band_latent.shape[-2:]) != (b1 - b0, w):
            raise ValueError(f"band latent {tuple(band_latent.shape)} is not rows {b0}:{b1} of {self.shape}")
        labels = np.ascontiguousarray(labels, np.uint8)
        num_labels = int(labels.max()) + 1 if labels.size else 1  # as the single-process sampler plans
        x = band_latent.to(s.device, torch.float32)
        steps = s.steps
        end = steps if stop_at is None else min(stop_at, steps)
        last_checkpoint = time.monotonic()
        for k in range(step, end):
            started = time.perf_counter()
            grid = s.grid(self.shape, k)
            needs = [window_rows(grid, self.bands.rows(r)) for r in range(self.bands.count)]
            window, sent = exchange_rows(x, self.bands, self.rank, needs, self.group)
            n0, n1 = needs[self.rank]
            # this band's patches on a canvas of the rows they read; owned rows clipped to the band
            mine = (grid.own_y0 < b1) & (grid.own_y1 > b0)
            geometry = np.stack([
                grid.window_y[mine] - n0, grid.window_x[mine],
                np.maximum(grid.own_y0[mine], b0) - n0, np.minimum(grid.own_y1[mine], b1) - n0,
                grid.own_x0[mine], grid.own_x1[mine],
            ])  # fmt: skip
            canvas = LatentCanvas(window, labels[n0:n1], s.device)
            count = int(mine.sum())

            def after_batch(done: int, total: int, k: int = k) -> None:
                if self.rank == 0:
                    report(
                        progress,
                        ProgressEvent(
                            "sample", k * 1000 + (1000 * done) // total, steps * 1000,
                            f"step {k + 1}/{steps}, patch {done}/{total} of band 1/{self.bands.count}",
                            work=s.denoiser.count.network,
                        ),
                    )  # fmt: skip

            s._step(canvas, geometry, k, num_labels, row_offset=n0, after_batch=after_batch)  # noqa: SLF001
            cancelled_here = cancel is not None and cancel.cancelled
            due = self.rank == 0 and time.monotonic() - last_checkpoint >= checkpoint_every_s
            any_cancelled, due = self._agree(cancelled_here, due)
            if any_cancelled:
                # the step did not finish everywhere: keep the state at its start
                self._checkpoint(x, k, checkpoint)
                raise Cancelled(f"cancelled at step {k + 1}/{steps}")
            x = canvas.current[:, :-1].view(s.channels, n1 - n0, w)[:, b0 - n0 : b1 - n0].clone()
            self.stats.patches_per_step.append(count)
            self.stats.halo_bytes_per_step.append(sent)
            self.stats.seconds_per_step.append(time.perf_counter() - started)
            if due or k + 1 == steps:
                self._checkpoint(x, k + 1, checkpoint)
                last_checkpoint = time.monotonic()
        return x

    def _checkpoint(self, x: torch.Tensor, step: int, checkpoint: Callable[[SamplerState], None] | None) -> None:
        whole = self.gather(x)
        if whole is not None and checkpoint is not None:
            checkpoint(SamplerState(whole, step))
        dist.barrier(group=self.group)
