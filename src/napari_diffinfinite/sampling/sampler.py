"""DiffInfinite's random-patch diffusion, parallel: every patch of a step in large batches.

The official sampler denoises one patch at a time at random positions and keeps a time per
latent pixel. Here every step shifts the patch grid by a random offset, covers the whole
latent with it (see :mod:`.grid`), and denoises all its patches in batches; each latent
pixel is owned by exactly one patch and advances exactly one step per step. Offsets and
noise are keyed by (seed, step, position) (see :mod:`.noise`), so the result does not
depend on the batch size or on where a run was interrupted and resumed.

The orchestration is built for a GPU: per step, the grid and the labels present in each
patch are planned on the host once (one device-to-host copy); per batch, gathering the
windows, the guidance, the noise of the written cells and writing the owned cells are a
few batched tensor operations on the compute device, with no host synchronisation. Only
the two latent buffers and the label map are held (see :mod:`.canvas`).

Cells get context: the owned cells are ``patch - 2 * context`` wide and sit in the middle
of their windows, so the network sees around every pixel it writes. A cell denoised without
context keeps a faint border that later steps do not remove: at low noise (the last steps)
and, measured on the demo slide, at the early steps too (their cell borders were the
strongest seams left once the late steps had context); ``patch / 16`` on each side suffices
there, at 1.3x the patches of cells without context (docs/benchmarks.md). Only the first
steps of a long schedule go without: a step's x0 prediction enters the latent with weight
sqrt(alpha_bar) of the step's target time, and below ``CONTEXT_MIN_SIGNAL`` (0.05; the first
step of 50, the first 8 of 250, none of 25 or fewer) a border in it is buried under noise
that every later step, with context, denoises across the border.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from .canvas import ConditionCanvas, LatentCanvas
from .grid import Patch, StepGrid, count_patches, ideal_patches, step_grid
from .guidance import EvalPlan, GuidedDenoiser, label_presence
from .noise import INITIAL_STEP, StepNoise, grid_offset, normal_field
from .schedule import Schedule

PREVIEW_SIDE = 512
CONTEXT_FROM = 0.0  # share of the schedule from which cells get context (0: from the first step)
CONTEXT_MIN_SIGNAL = 0.05  # cells get context at steps whose x0 weight sqrt(alpha_bar_next) is at least this
CONTEXT = 1 / 16  # context on each side of a cell, as a share of the patch
_PRESENCE_CHUNK = 256  # windows whose labels are looked at together when planning a step


@dataclass
class SamplerState:
    """The latent at the start of DDIM step ``step`` (``step == steps`` when finished)."""

    latent: torch.Tensor  # (C, h, w) float32, CPU
    step: int


@dataclass
class SamplerStats:
    patches_per_step: list[int] = field(default_factory=list)
    network_evals: int = 0
    seconds_per_step: list[float] = field(default_factory=list)
    ideal_patches_per_step: float = 0.0
    skipped_patches: int = 0  # windows on known pixels (a cascade's glass), not given to the network

    @property
    def mean_patches_per_step(self) -> float:
        return float(np.mean(self.patches_per_step)) if self.patches_per_step else 0.0


def auto_batch_size(
    unet: torch.nn.Module,
    patch: int,
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    *,
    channels_last: bool = False,
    share: float = 0.5,
) -> int:
    """Network evaluations per forward call that fit in ``share`` of free memory (CPU: 16).

    The probe runs the network as the sampler will (autocast ``dtype``, channels-last);
    on CUDA the result is rounded down to a multiple of 8, the shape tensor cores and
    static-shape (CUDA graph) batches want.
    """
    if device.type != "cuda" or not hasattr(unet, "set_attention_reduction"):
        return 16
    free, _total = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe = 2
    x = torch.zeros(probe, channels, patch, patch, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cascade = getattr(getattr(unet, "config", None), "condition_channels", 0)  # a cascade stage's extra input
    extra = (torch.zeros(probe, cascade, patch, patch, device=device),) if cascade else ()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        unet(
            x, torch.zeros(probe, dtype=torch.long, device=device), torch.ones(probe, 1, patch, patch, device=device),
            *extra,
        )  # fmt: skip
    per_eval = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    fit = int(min(512, share * free // per_eval))
    return max(1, fit // 8 * 8 if fit >= 8 else fit)


def patches_per_run(
    shape: tuple[int, int], patch: int, steps: int, *, context: int | None = None,
    context_from: float = CONTEXT_FROM,
) -> int:  # fmt: skip
    """About how many patches a run of ``steps`` steps evaluates on a latent of ``shape``.

    Each step is counted on a grid with a typical offset (half a cell): steps whose cells are
    smaller by the context on both sides need more patches (about 1.3x at the default
    context of patch / 16). For time estimates; the sampler's own grids are keyed.
    """
    shape = (max(shape[0], patch), max(shape[1], patch))
    context = default_context(patch) if context is None else context
    schedule = Schedule(steps)
    with_context = sum(has_context(schedule, k, context_from) for k in range(steps))
    total = 0
    for m, count in ((0, steps - with_context), (context, with_context)):
        if count:
            cell = patch - 2 * m
            total += count * count_patches(shape, patch, (cell // 2, cell // 2), m)
    return total


def x0_weight(step) -> float:
    """How much of a step's x0 prediction enters the latent it writes: sqrt(alpha_bar) of its
    target time (1 for the final step, which returns x0; 1 for schedules that do not say)."""
    if getattr(step, "final", False):
        return 1.0
    return float(getattr(step, "sqrt_ac_next", 1.0))


def has_context(schedule, step: int, context_from: float = CONTEXT_FROM) -> bool:
    """Whether the cells of ``step`` get context: from ``context_from`` of the schedule on, and
    only where the step's x0 weight reaches ``CONTEXT_MIN_SIGNAL`` (see the module docstring)."""
    return step >= math.ceil(context_from * len(schedule)) and x0_weight(schedule[step]) >= CONTEXT_MIN_SIGNAL


def default_context(patch: int) -> int:
    """Latent pixels of context on each side of a cell by default: ``patch / 16``, rounded."""
    return max(0, round(patch * CONTEXT))


def _owned(
    rows: torch.Tensor, cols: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> torch.Tensor:
    """(B, P, Q) bool: which pixels of windows spanning rows (B, P) x cols (B, Q) lie in their
    owned cells [y0, y1) x [x0, x1) (each (B,))."""
    return ((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None] & ((cols >= x0[:, None]) & (cols < x1[:, None]))[
        :, None, :
    ]


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs [start, end) of equal values in a host bool array, with their value."""
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(flags)]
    return [(a, b, bool(flags[a])) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class RandomPatchSampler:
    """Parallel random-patch DDIM sampler over a latent of any size (>= one patch).

    ``channels_last`` (default: on CUDA and CPU) and ``compile`` (``torch.compile``, opt-in) speed up
    the network; ``static_shapes`` (default: with ``compile`` on CUDA) pads every network
    call to the batch size. ``context`` latent pixels of context (default patch / 16) are
    given to the cells of the steps from ``context_from`` of the schedule on (default: the
    first) whose x0 weight reaches ``CONTEXT_MIN_SIGNAL`` (see :func:`has_context`).

    ``schedule`` replaces DiffInfinite's DDIM schedule (``steps``, ``eta``, ``timesteps`` are
    then unused) with any sequence of steps that have ``t``, ``final``, ``sigma`` and
    ``advance(x, model_output, noise, see_x0)`` (e.g. a diffusers scheduler driven through its
    ``step`` API, :mod:`napari_diffinfinite.diffusers_backend.schedule`). A schedule with
    ``history_channels`` > 0 keeps that many extra channels per latent pixel on the canvas
    (a multistep solver's earlier model outputs): they are gathered, advanced and written
    with the latent, and saved with it for resume.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        channels: int,
        patch: int,
        steps: int = 250,
        omega: float = 3.0,
        eta: float = 1.0,
        seed: int = 0,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        timesteps: int = 1000,
        denoiser_class: type[GuidedDenoiser] = GuidedDenoiser,
        channels_last: bool | None = None,
        compile: bool = False,
        static_shapes: bool | None = None,
        context: int | None = None,
        context_from: float = CONTEXT_FROM,
        schedule=None,
        prediction: str = "pred_noise",
    ) -> None:
        self.unet = unet
        self.channels, self.patch, self.seed = channels, patch, seed
        self.schedule = Schedule(steps, eta, timesteps) if schedule is None else schedule
        self.history_channels = int(getattr(self.schedule, "history_channels", 0))
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        # channels-last convolutions are faster on CUDA and on x86 CPUs through oneDNN (about
        # 20 % for the demo image model on 2 cores; benchmarks/bench_cpu_network.py)
        channels_last = self.device.type in ("cuda", "cpu") if channels_last is None else channels_last
        static_shapes = (compile and on_cuda) if static_shapes is None else static_shapes
        if batch_size is None:
            batch_size = auto_batch_size(unet, patch, channels, self.device, dtype, channels_last=channels_last)
        self.denoiser = denoiser_class(
            unet, omega, batch_size, self.device, dtype,
            channels_last=channels_last, compile=compile, static_shapes=static_shapes,
        )  # fmt: skip
        if prediction == "pred_v":
            self.denoiser.v_alphas = self.schedule.alphas_cumprod.to(self.device)
        elif prediction != "pred_noise":
            raise ValueError(f"unknown prediction {prediction!r}; expected 'pred_noise' or 'pred_v'")
        self.cell_context = default_context(patch) if context is None else int(context)
        if not 0 <= 2 * self.cell_context < patch:
            raise ValueError(f"context {self.cell_context} leaves no cell inside a patch of {patch}")
        self.context_from = context_from
        self.stats = SamplerStats()

    @property
    def steps(self) -> int:
        return len(self.schedule)

    @property
    def batch_size(self) -> int:
        return self.denoiser.max_batch

    def context(self, step: int) -> int:
        """Latent pixels of context around the cells of ``step`` (0: cells fill their windows)."""
        return self.cell_context if has_context(self.schedule, step, self.context_from) else 0

    def initial_state(self, shape: tuple[int, int]) -> SamplerState:
        """Keyed Gaussian noise x_T over a latent of ``shape`` (h, w)."""
        if min(shape) < self.patch:
            raise ValueError(f"latent {shape} is smaller than one patch ({self.patch}); pad it first")
        noise = normal_field(self.seed, INITIAL_STEP, self.channels, 0, shape[0], 0, shape[1], device=self.device)
        return SamplerState(noise.cpu(), 0)

    def grid(self, shape: tuple[int, int], step: int) -> StepGrid:
        return step_grid(shape, self.patch, grid_offset(self.seed, step, self.patch), self.context(step))

    def patches(self, shape: tuple[int, int], step: int) -> list[Patch]:
        return self.grid(shape, step).patches()

    def _plan_step(
        self, canvas: LatentCanvas, geometry: np.ndarray, num_labels: int, context: int = 0
    ) -> tuple[np.ndarray, EvalPlan]:
        """The step's patches in evaluation order and its network evaluations (see :meth:`_presence`).

        The labels present in every window decide the evaluations. Patches are sorted by the
        denoiser's group (those in one class first, see :meth:`GuidedDenoiser.group`), then
        those whose owned cell is a whole square first (written by :meth:`LatentCanvas.write_cells`):
        batches then hold few runs of each kind. Returns ``geometry`` in that order.
        """
        present = self._presence(canvas, geometry, num_labels)
        order = np.lexsort((~self._whole_cells(geometry, context), self.denoiser.group(present)))
        return geometry[:, order], self.denoiser.plan(present[order]).to(self.device)

    def _presence(self, canvas: LatentCanvas, geometry: np.ndarray, num_labels: int) -> np.ndarray:
        """(N, L) bool on the host: the labels present in each window (two syncs per step).

        Most windows lie in one class: one min/max pass over every window finds those, and
        only the others are compared label by label.
        """
        windows = torch.from_numpy(geometry[:2]).to(self.device)
        bounds = []
        for start in range(0, windows.shape[1], _PRESENCE_CHUNK):
            wy, wx = windows[0, start : start + _PRESENCE_CHUNK], windows[1, start : start + _PRESENCE_CHUNK]
            labels = canvas.gather_label_windows(wy, wx, self.patch)
            bounds.append(torch.stack(torch.aminmax(labels.view(len(labels), -1), dim=1)))
        low, high = torch.cat(bounds, 1).long().cpu().numpy()
        present = np.zeros((len(low), num_labels), bool)
        present[np.arange(len(low)), low] = True
        present[np.arange(len(low)), high] = True
        mixed = np.flatnonzero(high - low > 1)  # two labels are found by min and max; more need a look
        if len(mixed):
            index = torch.from_numpy(mixed).to(self.device)
            found = []
            for start in range(0, len(mixed), _PRESENCE_CHUNK):
                part = index[start : start + _PRESENCE_CHUNK]
                labels = canvas.gather_label_windows(windows[0, part], windows[1, part], self.patch)
                found.append(label_presence(labels, num_labels))
            present[mixed] = torch.cat(found).cpu().numpy()
        return present

    def _whole_cells(self, geometry: np.ndarray, m: int) -> np.ndarray:
        """(N,) bool: the patches whose owned cell is the square of side ``patch - 2 m`` at (m, m) of the window."""
        wy, wx, y0, y1, x0, x1 = geometry
        cell = self.patch - 2 * m
        return (y0 - wy == m) & (x0 - wx == m) & (y1 - y0 == cell) & (x1 - x0 == cell)

    def _batches(self, plan: EvalPlan) -> list[tuple[int, int]]:
        """Consecutive patch ranges whose evaluations fit in one network batch (>= one patch)."""
        spans, start, limit = [], 0, self.denoiser.max_batch
        first = plan.first_row
        n = len(first) - 1
        while start < n:
            end = int(np.searchsorted(first, first[start] + limit, side="right")) - 1
            end = min(max(end, start + 1), n)
            spans.append((start, end))
            start = end
        return spans

    def _step(
        self,
        canvas: LatentCanvas,
        geometry: np.ndarray,
        k: int,
        num_labels: int,
        *,
        row_offset: int = 0,
        before_batch: Callable[[], None] | None = None,
        after_batch: Callable[[int, int], None] | None = None,
        x0_hook: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
        condition: ConditionCanvas | None = None,
    ) -> None:
        """Denoise step ``k`` of the patches ``geometry`` on ``canvas`` and swap its buffers.

        ``geometry``: (6, N) window top, window left, owned rows [y0, y1) and columns [x0, x1),
        in canvas coordinates; ``row_offset`` is the canvas's first row on the whole latent
        (the keyed noise is drawn at latent positions). ``before_batch`` runs before every
        batch (a cancel check), ``after_batch(done, total)`` after it (progress), ``x0_hook``
        sees the x0 prediction of every run of patches with its rows, columns and owned mask
        (None: all of it is owned) (preview). ``condition``: a cascade stage's lower level,
        gathered under every window and given to the network with it.
        """
        if geometry.shape[1] == 0:  # every cell was written otherwise (a cascade's known windows)
            canvas.swap()
            return
        ddim = self.schedule[k]
        m = self.context(k)
        geometry, plan = self._plan_step(canvas, geometry, num_labels, m)
        whole = self._whole_cells(geometry, m)
        windows = torch.from_numpy(geometry).to(self.device)
        noise = None
        if not ddim.final and ddim.sigma:
            height, width = canvas.shape
            noise = StepNoise(self.seed, k, self.channels, height, width, row_offset=row_offset, device=self.device)
        ar = torch.arange(self.patch, device=self.device)
        total = windows.shape[1]
        for p0, p1 in self._batches(plan):
            if before_batch is not None:
                before_batch()
            wy, wx, oy0, oy1, ox0, ox1 = windows[:, p0:p1]
            span = plan.span(p0, p1)
            xs = canvas.gather_windows(wy, wx, self.patch)  # (b, C, P, P)
            # the patches in one class (the first span.uniform) need no labels
            ls = canvas.gather_label_windows(wy[span.uniform :], wx[span.uniform :], self.patch)
            rows, cols = wy[:, None] + ar, wx[:, None] + ar  # (b, P) canvas positions
            extra = () if condition is None else (condition.gather(rows, cols).transpose(0, 1),)
            # the network sees the latent channels; a multistep solver's history rides along
            eps = self.denoiser(xs[:, : self.channels] if self.history_channels else xs, ddim.t, ls, span, *extra)
            for r0, r1, is_whole in _runs(whole[p0:p1]):
                x, e, r, c = xs[r0:r1], eps[r0:r1], rows[r0:r1], cols[r0:r1]
                owned = None  # a whole cell: every pixel computed below is written
                if is_whole and m:  # only the cell advances: no work on the context around it
                    cell = slice(m, self.patch - m)
                    x, e, r, c = x[..., cell, cell], e[..., cell, cell], r[:, cell], c[:, cell]
                elif not is_whole:
                    owned = _owned(r, c, oy0[r0:r1], oy1[r0:r1], ox0[r0:r1], ox1[r0:r1])
                see_x0 = None if x0_hook is None else (lambda x0, r=r, c=c, owned=owned: x0_hook(x0, r, c, owned))
                update = ddim.advance(x, e, None if noise is None else noise.at(r, c), see_x0)
                if is_whole:
                    canvas.write_cells(oy0[r0:r1], ox0[r0:r1], update)
                else:
                    canvas.scatter(canvas.window_index(r, c), owned, update)
            if after_batch is not None:
                after_batch(p1, total)
        canvas.swap()

    @torch.no_grad()
    def run(
        self,
        state: SamplerState,
        labels: np.ndarray,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        checkpoint: Callable[[SamplerState], None] | None = None,
        checkpoint_every_s: float = 60.0,
        preview: Callable[[torch.Tensor], np.ndarray] | None = None,
        stop_at: int | None = None,
        condition: ConditionCanvas | None = None,
        known: np.ndarray | None = None,
    ) -> SamplerState:
        """Advance ``state`` to the end of the schedule.

        ``labels``: (h, w) uint8 label mask at latent resolution. ``checkpoint`` receives the
        state at step boundaries (every ``checkpoint_every_s`` seconds, at the end, and when
        cancelled, before :class:`Cancelled` is raised). ``preview`` maps a low-resolution x0
        prediction (C, h', w') to an RGB uint8 image sent with the progress events.
        ``stop_at`` ends the run early, at the start of that step (benchmarks).
        ``condition``: a cascade stage's lower level, gathered under every window at the
        window's positions and given to the network with it. ``known`` ((h, w) bool, with a
        condition in the latent's own space): pixels whose clean value is the condition (a
        cascade's glass); windows wholly on them are not given to the network: their noise is
        the one that makes x0 the condition, so they follow the same DDIM path to it (same
        keyed noise), and their neighbours see consistent context.
        """
        shape = tuple(state.latent.shape[-2:])
        if labels.shape != shape:
            raise ValueError(f"label mask {labels.shape} does not match the latent {shape}")
        latent = state.latent.float()
        if self.history_channels and latent.shape[0] == self.channels:  # the start: no history yet
            latent = torch.cat([latent, latent.new_zeros(self.history_channels, *shape)])
        if latent.shape[0] != self.channels + self.history_channels:
            raise ValueError(
                f"the state has {latent.shape[0]} channels; this sampler keeps {self.channels} latent channels "
                f"+ {self.history_channels} of solver history"
            )
        canvas = LatentCanvas(latent, np.ascontiguousarray(labels, np.uint8), self.device)
        num_labels = int(labels.max()) + 1 if labels.size else 1
        self.stats.ideal_patches_per_step = ideal_patches(shape, self.patch)
        stride = max(1, -(-max(shape) // PREVIEW_SIDE))
        x0_preview = None
        if preview is not None:
            x0_preview = torch.zeros(
                self.channels, -(-shape[0] // stride) * -(-shape[1] // stride) + 1, device=self.device
            )
        last_checkpoint = time.monotonic()
        steps = self.steps

        known_sums = None
        if known is not None:
            if condition is None or condition.channels != self.channels or known.shape != shape:
                raise ValueError("known pixels need a condition in the latent's own space, over the whole latent")
            known_sums = np.pad(np.asarray(known, bool), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        end = steps if stop_at is None else min(stop_at, steps)
        for k in range(state.step, end):
            started = time.perf_counter()
            grid = self.grid(shape, k)
            geometry = np.stack([grid.window_y, grid.window_x, grid.own_y0, grid.own_y1, grid.own_x0, grid.own_x1])
            if known_sums is not None:  # windows wholly on known pixels: x0 is the condition, no network
                skip = self._known_windows(known_sums, grid)
                self._copy_known(canvas, condition, geometry[:, skip], self.schedule[k], k, x0_preview, stride, shape)
                geometry = geometry[:, ~skip]
                self.stats.skipped_patches += int(skip.sum())

            def before_batch(k: int = k) -> None:
                try:
                    check(cancel)
                except BaseException:
                    if checkpoint is not None:
                        checkpoint(SamplerState(self._state_latent(canvas, k), k))
                    raise

            def after_batch(done: int, total: int, k: int = k) -> None:
                report(
                    progress,
                    ProgressEvent("sample", k * 1000 + (1000 * done) // total, steps * 1000,
                                  f"step {k + 1}/{steps}, patch {done}/{total}", work=self.denoiser.count.network),
                )  # fmt: skip

            x0_hook = None
            if x0_preview is not None:

                def x0_hook(x0, rows, cols, owned):
                    self._preview_write(x0_preview, x0, rows, cols, owned, stride, shape)

            self._step(
                canvas, geometry, k, num_labels, before_batch=before_batch, after_batch=after_batch, x0_hook=x0_hook,
                condition=condition,
            )  # fmt: skip
            self.stats.patches_per_step.append(geometry.shape[1])
            self.stats.seconds_per_step.append(time.perf_counter() - started)
            if preview is not None:
                ph, pw = -(-shape[0] // stride), -(-shape[1] // stride)
                image = preview(x0_preview[:, :-1].reshape(self.channels, ph, pw))
                report(
                    progress,
                    ProgressEvent("sample", (k + 1) * 1000, steps * 1000, f"step {k + 1}/{steps}", image,
                                  work=self.denoiser.count.network),
                )  # fmt: skip
            now = time.monotonic()
            if checkpoint is not None and (k + 1 == steps or now - last_checkpoint >= checkpoint_every_s):
                checkpoint(SamplerState(self._state_latent(canvas, k + 1), k + 1))
                last_checkpoint = now
        self.stats.network_evals = self.denoiser.count.network
        return SamplerState(self._state_latent(canvas, end), end)

    def _state_latent(self, canvas: LatentCanvas, step: int) -> torch.Tensor:
        """The canvas as a state to save: with the solver history while steps remain, else the latent alone."""
        latent = canvas.latent()
        return latent if step < self.steps else latent[: self.channels].clone()

    def _known_windows(self, sums: np.ndarray, grid: StepGrid) -> np.ndarray:
        """(N,) bool: the grid's windows whose pixels are all known (from the summed-area table)."""
        y, x, p = grid.window_y, grid.window_x, self.patch
        inside = sums[y + p, x + p] - sums[y, x + p] - sums[y + p, x] + sums[y, x]
        return inside == p * p

    def _copy_known(self, canvas: LatentCanvas, condition: ConditionCanvas, geometry: np.ndarray, ddim,
                    k: int, x0_preview: torch.Tensor | None, stride: int,
                    shape: tuple[int, int]) -> None:  # fmt: skip
        """The DDIM update of windows whose x0 is their condition: eps = (x_t - sqrt(a) x0) / sqrt(1 - a)."""
        ar = torch.arange(self.patch, device=self.device)
        a = float(self.schedule.alphas_cumprod[ddim.t])
        noise = None
        if not ddim.final and ddim.sigma:
            height, width = canvas.shape
            noise = StepNoise(self.seed, k, self.channels, height, width, device=self.device)
        windows = torch.from_numpy(geometry).to(self.device)
        for start in range(0, windows.shape[1], self.batch_size):
            wy, wx, oy0, oy1, ox0, ox1 = windows[:, start : start + self.batch_size]
            rows, cols = wy[:, None] + ar, wx[:, None] + ar
            xs = canvas.gather_windows(wy, wx, self.patch)  # (b, C, P, P)
            x0 = condition.gather(rows, cols).transpose(0, 1)
            eps = (xs - math.sqrt(a) * x0) / math.sqrt(1 - a)
            owned = _owned(rows, cols, oy0, oy1, ox0, ox1)
            see_x0 = None
            if x0_preview is not None:

                def see_x0(x0, rows=rows, cols=cols, owned=owned):
                    self._preview_write(x0_preview, x0, rows, cols, owned, stride, shape)

            update = ddim.advance(xs, eps, None if noise is None else noise.at(rows, cols), see_x0)
            canvas.scatter(canvas.window_index(rows, cols), owned, update)

    @staticmethod
    def _preview_write(
        buffer: torch.Tensor,
        x0: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        owned: torch.Tensor | None,
        stride: int,
        shape: tuple[int, int],
    ) -> None:
        """Write every ``stride``-th owned pixel of x0 (b, C, P, Q) into the flat preview buffer."""
        on_grid = ((rows % stride) == 0)[:, :, None] & ((cols % stride) == 0)[:, None, :]
        if owned is not None:
            on_grid &= owned
        width = -(-shape[1] // stride)
        target = (rows // stride)[:, :, None] * width + (cols // stride)[:, None, :]
        target = torch.where(on_grid, target, buffer.shape[1] - 1).reshape(1, -1)
        buffer.scatter_(1, target.expand(buffer.shape[0], -1), x0.transpose(0, 1).reshape(buffer.shape[0], -1))
