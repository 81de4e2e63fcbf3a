"""Multi-GPU training through PyTorch's own DistributedDataParallel, launched by torchrun.

``torchrun --nproc_per_node N -m napari_diffinfinite.cli train ...`` starts N processes
and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` joins the
process group (NCCL on GPUs, Gloo on CPUs) and picks the process's GPU. Without those
variables training runs in one process. Nothing here reimplements gradient
synchronisation: the model is wrapped in ``torch.nn.parallel.DistributedDataParallel``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import TrainingError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (to stop all ranks together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def resolve_training_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("CUDA was requested but no GPU is visible to torch; use --device cpu")
    return dev


def init_distributed(device: str | None = "auto") -> DistributedContext:
    """Join the torchrun process group if there is one; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_training_device(device)
    if world_size <= 1:
        return DistributedContext(device=base)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"process {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are visible; "
                "give torchrun --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    initialised = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
        initialised = True
    return DistributedContext(rank, world_size, local_rank, base, initialised)


def wrap_model(module: torch.nn.Module, ctx: DistributedContext) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when running under torchrun."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
