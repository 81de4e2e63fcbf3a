"""Classifier-free guidance with DiffInfinite's per-label mask compositing, batched.

For a patch whose mask holds labels L, the official sampler runs, for every label l in L,
the network conditioned on l with the binary mask of l (and, when l != 0, an unconditional
pass with label 0 and a zero mask), guides with ``uncond + (cond - uncond) * (omega + 1)``,
and gives every pixel the prediction of its own label. Label 0 ("unknown") is the
unconditional class itself.

The unconditional pass does not depend on the label, so here it runs once per patch, and
all passes of all patches of a batch go through the network together, in chunks of at most
``max_batch`` network evaluations. Which passes a patch needs is decided on the host from
the labels present in it (:func:`label_presence`, one device-to-host copy for a whole
step), so that inputs, masks and the compositing are a few batched tensor operations with
no host synchronisation per patch.

The network path is ready for speed: reduced precision by autocast (bf16, fp16),
channels-last inputs, an opt-in ``torch.compile``, and static batch shapes (every call
padded to ``max_batch`` evaluations) so that compiled CUDA graphs can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EvalCount:
    """Network evaluations: one per patch (unconditional) plus one per labelled class in it."""

    patches: int = 0
    network: int = 0


def label_presence(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(B, num_labels) bool: which labels occur in each of the (B, p, p) label patches.

    One comparison per label on the uint8 labels (cheaper than a one-hot scatter, which
    needs the labels as int64 indices).
    """
    flat = labels.reshape(labels.shape[0], -1)
    return torch.stack([(flat == label).any(dim=1) for label in range(num_labels)], dim=1)


@dataclass
class EvalPlan:
    """The network evaluations ("rows") of a run of patches, planned on the host.

    Rows of patch ``i`` are ``first_row[i]:first_row[i + 1]``; ``row_patch``/``row_label``/
    ``row_null`` say which patch a row belongs to, which label it is conditioned on and
    whether it is the unconditional pass; ``null_row[i]`` is patch i's unconditional row
    (any of its rows when it has none); ``cond_rows`` lists the conditional rows. The host
    arrays plan the batches; their device copies (``to``) are sliced per batch without
    synchronising. The first ``uniform`` patches lie in one labelled class each: their rows
    are (unconditional, conditional) pairs and their guidance is one elementwise pass.
    """

    first_row: np.ndarray  # (N + 1,)
    row_patch: np.ndarray  # (E,)
    row_label: np.ndarray  # (E,)
    row_null: np.ndarray  # (E,) bool
    null_row: np.ndarray  # (N,)
    cond_rows: np.ndarray  # (K,) increasing
    device_tensors: dict[str, torch.Tensor] | None = None
    uniform: int = 0  # leading patches whose rows are (unconditional, one label) and whose pixels all have that label

    @property
    def rows(self) -> int:
        return int(self.first_row[-1])

    def to(self, device: torch.device) -> EvalPlan:
        """The plan with one device copy of its arrays (one host-to-device transfer)."""
        names = ("row_patch", "row_label", "row_null", "null_row", "cond_rows")
        packed = torch.from_numpy(np.concatenate([getattr(self, n).astype(np.int64) for n in names]))
        parts = packed.to(device, non_blocking=True).split([len(getattr(self, n)) for n in names])
        tensors = dict(zip(names, parts))
        tensors["row_null"] = tensors["row_null"].bool()
        return EvalPlan(
            self.first_row,
            self.row_patch,
            self.row_label,
            self.row_null,
            self.null_row,
            self.cond_rows,
            tensors,
            self.uniform,
        )

    def span(self, p0: int, p1: int) -> EvalPlan:
        """The plan of patches p0:p1, renumbered from 0 (device tensors are sliced, not copied)."""
        r0, r1 = int(self.first_row[p0]), int(self.first_row[p1])
        k0, k1 = np.searchsorted(self.cond_rows, [r0, r1])
        tensors = None
        if self.device_tensors is not None:
            t = self.device_tensors
            tensors = {
                "row_patch": t["row_patch"][r0:r1] - p0,
                "row_label": t["row_label"][r0:r1],
                "row_null": t["row_null"][r0:r1],
                "null_row": t["null_row"][p0:p1] - r0,
                "cond_rows": t["cond_rows"][k0:k1] - r0,
            }
        return EvalPlan(
            self.first_row[p0 : p1 + 1] - r0,
            self.row_patch[r0:r1] - p0,
            self.row_label[r0:r1],
            self.row_null[r0:r1],
            self.null_row[p0:p1] - r0,
            self.cond_rows[k0:k1] - r0,
            tensors,
            int(np.clip(self.uniform - p0, 0, p1 - p0)),
        )

    def tensor(self, name: str, device: torch.device) -> torch.Tensor:
        if self.device_tensors is not None:
            return self.device_tensors[name]
        value = torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
        return value.to(device).bool() if name == "row_null" else value.long().to(device)


def _plan(rows_per_patch: list[list[tuple[int, bool]]], uniform: int = 0) -> EvalPlan:
    """An :class:`EvalPlan` from each patch's list of (label, is_unconditional) rows."""
    counts = np.array([len(r) for r in rows_per_patch], np.int64)
    first_row = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = [row for rows in rows_per_patch for row in rows]
    row_patch = np.repeat(np.arange(len(rows_per_patch), dtype=np.int64), counts)
    row_label = np.array([label for label, _ in flat], np.int64)
    row_null = np.array([null for _, null in flat], bool)
    null_row = first_row[:-1].copy()
    null_patches = row_patch[row_null]
    null_row[null_patches] = np.flatnonzero(row_null)
    return EvalPlan(first_row, row_patch, row_label, row_null, null_row, np.flatnonzero(~row_null), uniform=uniform)


def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(0, index)`` for a contiguous tensor, as rows of a 2-D view (the 2-D
    kernel copies whole rows; on a CPU the N-D one is several times slower)."""
    flat = t.reshape(t.shape[0], -1).index_select(0, index)
    return flat.view(len(index), *t.shape[1:])


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class GuidedDenoiser:
    """Noise prediction of a batch of patches under per-label classifier-free guidance.

    ``max_batch`` bounds the network evaluations per forward call; on an out-of-memory error
    the call is retried at half the size (and the smaller size is kept). ``static_shapes``
    pads every call to exactly ``max_batch`` evaluations (for CUDA graphs); ``channels_last``
    converts the network and its inputs to channels-last memory; ``compile`` runs the
    network through ``torch.compile``.

    ``v_alphas`` (the schedule's cumulative alphas; None for noise-predicting networks)
    marks a ``pred_v`` network: its output is turned into the noise,
    ``eps = sqrt(a_t) v + sqrt(1 - a_t) x_t``, before guidance (linear, so guiding v or
    eps is the same). ``condition`` (cascade stages) is passed to every pass of a patch.
    """

    v_alphas: torch.Tensor | None = None

    def __init__(
        self,
        unet: torch.nn.Module,
        omega: float,
        max_batch: int = 8,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        channels_last: bool = False,
        compile: bool = False,
        static_shapes: bool = False,
    ) -> None:
        self.unet = unet
        self.scale = omega + 1.0
        self.max_batch = max(1, int(max_batch))
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.static_shapes = static_shapes
        self.count = EvalCount()
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.network = unet
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" and static_shapes else None
            self.network = torch.compile(unet, mode=mode, dynamic=False)

    @property
    def guided(self) -> bool:
        return self.scale != 1.0

    @staticmethod
    def _uniform(present: np.ndarray) -> np.ndarray:
        """(N,) bool: the patches whose pixels all carry one label other than 0."""
        return (present.sum(axis=1) == 1) & ~present[:, 0] if present.size else np.zeros(len(present), bool)

    def group(self, present: np.ndarray) -> np.ndarray:
        """(N,) int: 0 for the patches in one labelled class (under guidance), 1 for the others.

        Under guidance such a patch's prediction is one elementwise pass over its two rows
        when it comes first in its batch; the sampler evaluates a step's patches sorted by
        group. The order of a step's patches does not change the result (they all read one
        latent buffer and write disjoint cells of the other).
        """
        if not self.guided:
            return np.zeros(len(present), np.int64)
        return (~self._uniform(present)).astype(np.int64)

    def order(self, present: np.ndarray) -> np.ndarray:
        """The patches sorted by :meth:`group` (stable)."""
        return np.argsort(self.group(present), kind="stable")

    def plan(self, present: np.ndarray) -> EvalPlan:
        """The evaluations of patches whose labels are ``present`` ((N, L) bool, host).

        Per patch: the unconditional pass (when guided, or where label 0 occurs), then one
        conditional pass per label > 0 that occurs.
        """
        rows = []
        for labels in present:
            found = np.flatnonzero(labels)
            patch = [(0, True)] if self.guided or (len(labels) and labels[0]) else []
            patch += [(int(label), False) for label in found if label != 0]
            rows.append(patch)
        uniform = self._uniform(np.asarray(present, bool)) if self.guided else np.zeros(len(present), bool)
        leading = int(np.argmin(uniform)) if not uniform.all() else len(uniform)
        return _plan(rows, leading)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """The network on ``x`` in chunks of at most ``max_batch``, halving the chunk on OOM."""
        outputs, start = [], 0
        while start < len(x):
            size = min(self.max_batch, len(x) - start)
            chunk = [v[start : start + size] for v in (x, t, *conditions)]
            if self.static_shapes and size < self.max_batch:
                chunk = [torch.cat([v, v.new_zeros((self.max_batch - size, *v.shape[1:]))]) for v in chunk]
            if self.channels_last:
                chunk[0] = chunk[0].contiguous(memory_format=torch.channels_last)
            try:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    out = self.network(*chunk)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc) or size == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.max_batch = max(1, size // 2)
                continue
            out = out[:size].float()
            if self.v_alphas is not None:  # v -> eps (see the class docstring)
                a = self.v_alphas.to(out.device)[chunk[1][:size]].reshape(-1, 1, 1, 1)
                out = a.sqrt() * out + (1 - a).sqrt() * chunk[0][:size].float()
            outputs.append(out)
            start += size
        return torch.cat(outputs) if len(outputs) != 1 else outputs[0]

    @torch.no_grad()
    def __call__(
        self,
        x: torch.Tensor,
        t: int,
        labels: torch.Tensor,
        plan: EvalPlan | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Guided noise prediction for patches ``x`` (B, C, p, p) with label masks (B, p, p).

        ``plan`` (from :meth:`plan`, for these patches) avoids a device-to-host copy of the
        labels present; without it the presence is computed here. With a plan, ``labels`` may
        leave out its first ``plan.uniform`` patches (in one class each, they need none). ``condition``
        (B, Cc, p, p): a cascade stage's lower level under each patch.
        """
        if plan is None:
            num_labels = int(labels.max()) + 1 if labels.numel() else 1
            plan = self.plan(label_presence(labels, num_labels).cpu().numpy())
        self.count.patches += x.shape[0]
        self.count.network += plan.rows
        # rows are gathered from x by index: on a strided view (the latent channels sliced off a
        # solver's history channels) that takes a slow path, on contiguous memory a row copy
        if condition is not None:
            return self._guide(x.contiguous(), t, labels, plan, condition.contiguous())
        return self._guide(x.contiguous(), t, labels, plan)

    def _guide(
        self, x: torch.Tensor, t: int, labels: torch.Tensor, plan: EvalPlan, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        u = plan.uniform
        rest = plan.span(u, len(x)) if u else plan
        fast_rows = 2 * u
        row_patch = plan.tensor("row_patch", x.device)
        masks = torch.empty(plan.rows, 1, *labels.shape[1:], device=x.device)
        if u:
            # rows (unconditional, label l) of a patch all in class l: the masks are 0 and l
            masks[:fast_rows].copy_(
                plan.tensor("row_label", x.device)[:fast_rows, None, None, None].expand(-1, *masks.shape[1:])
            )
        row_labels = None
        if len(labels) == len(x):
            labels = labels[u:]  # the labels of the patches after the uniform ones
        if rest.rows:
            row_labels, masks[fast_rows:] = self._masks(labels, rest)
        times = torch.full((plan.rows,), t, dtype=torch.long, device=x.device)
        extra = () if condition is None else (take_rows(condition, row_patch),)
        out = self._forward(take_rows(x, row_patch), times, masks, *extra).contiguous()
        if not u:
            return self._compose(out, labels, row_labels, plan)
        result = torch.empty_like(x)
        null, cond = out[0:fast_rows:2], out[1:fast_rows:2]
        # the same operations, in the same order, as the general path: bit for bit its result
        torch.sub(cond, null, out=result[:u]).mul_(self.scale).add_(null)
        if u < len(x):
            result[u:] = self._compose(out[fast_rows:], labels, row_labels, rest)
        return result

    def _masks(self, labels: torch.Tensor, plan: EvalPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's patch labels (E, p, p) and its network mask (E, 1, p, p): its label where
        the patch has it, 0 elsewhere and on unconditional rows."""
        row_labels = take_rows(labels, plan.tensor("row_patch", labels.device))
        row_null = plan.tensor("row_null", labels.device)
        label = plan.tensor("row_label", labels.device).to(labels.dtype)[:, None, None]
        return row_labels, torch.where((row_labels == label) & ~row_null[:, None, None], label, 0)[:, None]

    def _compose(
        self, out: torch.Tensor, labels: torch.Tensor, row_labels: torch.Tensor, plan: EvalPlan
    ) -> torch.Tensor:
        """Each pixel's guided prediction from the rows ``out`` of the patches of ``plan``."""
        row_patch = plan.tensor("row_patch", out.device)
        null_row = plan.tensor("null_row", out.device)
        cond_rows = plan.tensor("cond_rows", out.device)
        label = plan.tensor("row_label", out.device).to(labels.dtype)[:, None, None]
        null = take_rows(out, null_row)  # (B, C, p, p): each patch's unconditional prediction
        cond = take_rows(out, cond_rows)
        cond_patch = row_patch.index_select(0, cond_rows)
        own = (take_rows(row_labels, cond_rows) == label.index_select(0, cond_rows))[:, None]
        # every pixel has one label, so each patch's sum adds one masked prediction to zeros
        # (exact): the result is bit for bit uncond + (cond - uncond) * scale, per pixel's label
        if self.guided:
            cond.sub_(take_rows(null, cond_patch)).mul_(own)
            composed = torch.zeros_like(null).index_add_(0, cond_patch, cond)
            return composed.mul_(self.scale).add_(null)
        composed = torch.zeros_like(null).index_add_(0, cond_patch, cond.mul_(own))
        return torch.where((labels == 0)[:, None], null, composed)


class ClassGuidedDenoiser(GuidedDenoiser):
    """Guidance for the class-conditioned mask model.

    Each patch is conditioned on the largest class in its condition map (the official mask
    sampler's rule); the unconditional branch uses the learned null class and is skipped
    when the guidance scale is 1 (omega = 0, the official default for masks).
    """

    def group(self, present: np.ndarray) -> np.ndarray:
        return np.zeros(len(present), np.int64)

    def plan(self, present: np.ndarray) -> EvalPlan:
        rows = []
        for labels in present:
            found = np.flatnonzero(labels)
            largest = int(found[-1]) if len(found) else 0
            rows.append([(largest, False), (0, True)] if self.guided else [(largest, False)])
        return _plan(rows)

    def _guide(self, x: torch.Tensor, t: int, labels: torch.Tensor, plan: EvalPlan) -> torch.Tensor:
        row_patch = plan.tensor("row_patch", x.device)
        row_null = plan.tensor("row_null", x.device)
        classes = plan.tensor("row_label", x.device)
        times = torch.full((plan.rows,), t, dtype=torch.long, device=x.device)
        out = self._forward(take_rows(x, row_patch), times, classes, row_null)
        if not self.guided:
            return out
        cond, null = out[0::2], out[1::2]
        return null + (cond - null) * self.scale
