"""Classifier-free guidance with DiffInfinite's per-label mask compositing, batched.

For a patch whose mask holds labels L, the official sampler runs, for every label l in L,
the network conditioned on l with the binary mask of l (and, when l != 0, an unconditional
pass with label 0 and a zero mask), guides with ``uncond + (cond - uncond) * (omega + 1)``,
and gives every pixel the prediction of its own label. Label 0 ("unknown") is the
unconditional class itself.

The unconditional pass does not depend on the label, so here it runs once per patch, and
all passes of all patches of a batch go through the network together, in chunks of at most
``max_batch`` network evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.unet import ImageUNet


@dataclass
class EvalCount:
    """Network evaluations: one per patch (unconditional) plus one per labelled class in it."""

    patches: int = 0
    network: int = 0


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class GuidedDenoiser:
    """Noise prediction of a batch of patches under per-label classifier-free guidance.

    ``max_batch`` bounds the network evaluations per forward call; on an out-of-memory error
    the call is retried at half the size (and the smaller size is kept).
    """

    def __init__(
        self,
        unet: ImageUNet,
        omega: float,
        max_batch: int = 8,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.unet = unet
        self.scale = omega + 1.0
        self.max_batch = max(1, int(max_batch))
        self.device = torch.device(device)
        self.dtype = dtype
        self.count = EvalCount()

    def _forward(self, x: torch.Tensor, t: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(x):
            size = min(self.max_batch, len(x) - start)
            try:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    out = self.unet(x[start : start + size], t[start : start + size], masks[start : start + size])
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc) or size == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.max_batch = max(1, size // 2)
                continue
            outputs.append(out.float())
            start += size
        return torch.cat(outputs) if outputs else x.new_zeros(x.shape)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        """Guided noise prediction for patches ``x`` (B, C, p, p) with label masks (B, p, p).

        With a guidance scale of 1 (omega = 0) the unconditional pass is only needed where a
        patch has unlabelled pixels, exactly as in the official code.
        """
        b = x.shape[0]
        guided = self.scale != 1.0
        null_index, cond_index, cond_label = [], [], []
        for i in range(b):
            present = torch.unique(labels[i]).tolist()
            if guided or 0 in present:
                null_index.append(i)
            for label in present:
                if label != 0:
                    cond_index.append(i)
                    cond_label.append(label)
        n_null = len(null_index)
        cond_idx = torch.tensor(cond_index, dtype=torch.long, device=x.device)
        cond_lab = torch.tensor(cond_label, dtype=labels.dtype, device=x.device)[:, None, None]
        inputs = torch.cat([x[null_index], x[cond_idx]])
        cond_masks = torch.where(labels[cond_idx] == cond_lab, cond_lab, 0)
        masks = torch.cat([torch.zeros_like(labels[:n_null]), cond_masks])[:, None].float()
        times = torch.full((len(inputs),), t, dtype=torch.long, device=x.device)
        out = self._forward(inputs, times, masks)
        self.count.patches += b
        self.count.network += len(inputs)

        eps = torch.zeros_like(x)
        row_of = {i: j for j, i in enumerate(null_index)}
        if n_null:
            eps[null_index] = out[:n_null]
        for j, (i, label) in enumerate(zip(cond_index, cond_label)):
            cond = out[n_null + j]
            if guided:
                cond = out[row_of[i]] + (cond - out[row_of[i]]) * self.scale
            eps[i] = torch.where((labels[i] == label)[None], cond, eps[i])
        return eps


class ClassGuidedDenoiser(GuidedDenoiser):
    """Guidance for the class-conditioned mask model.

    Each patch is conditioned on the largest class in its condition map (the official mask
    sampler's rule); the unconditional branch uses the learned null class and is skipped
    when the guidance scale is 1 (omega = 0, the official default for masks).
    """

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        classes = labels.reshape(b, -1).amax(dim=1).long()
        times = torch.full((b,), t, dtype=torch.long, device=x.device)
        guided = self.scale != 1.0
        inputs = torch.cat([x, x]) if guided else x
        null = torch.zeros(len(inputs), dtype=torch.bool, device=x.device)
        if guided:
            null[b:] = True
        out = self._forward_classes(inputs, torch.cat([times] * (2 if guided else 1)), torch.cat([classes] * (2 if guided else 1)), null)
        self.count.patches += b
        self.count.network += len(inputs)
        if not guided:
            return out
        return out[b:] + (out[:b] - out[b:]) * self.scale

    def _forward_classes(self, x, t, classes, null) -> torch.Tensor:
        outputs = []
        for start in range(0, len(x), self.max_batch):
            end = start + self.max_batch
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                outputs.append(self.unet(x[start:end], t[start:end], classes[start:end], null[start:end]).float())
        return torch.cat(outputs)
