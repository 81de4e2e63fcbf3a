"""Checking weights against the architecture they claim, then building the network from them.

The network is first built on the ``meta`` device (no memory): its keys and shapes are what
the weights must match, so a file is refused before a single real parameter is allocated. The
weights actually used must be floating-point, finite, contiguous and stored apart from each
other; then the network is allocated without random initialisation and filled from them.
Together with the caps of :meth:`ModelConfig.validate`, the network built can never be larger
than the weights the file really holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .config import UNetConfig
from .unet import build_unet

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Shapes = Mapping[str, tuple[int, ...]]


def expected_shapes(kind: str, unet: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the network's state dict and its shape, without allocating the network."""
    with torch.device("meta"):
        network = build_unet(kind, unet)
    return {key: tuple(value.shape) for key, value in network.state_dict().items()}


def check_shapes(expected: Shapes, found: Shapes, path: str | Path, architecture: str) -> None:
    """Refuse weights whose keys or shapes differ from ``expected``, listing every difference."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: file {tuple(found[k])} vs network {tuple(v)}"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError(
            f"{path} does not fit the {architecture} architecture it was identified as: " + "; ".join(parts)
        )


def check_tensors(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights that are not plain, finite, contiguous floating-point tensors of their own."""
    spans = []
    for key, value in state.items():
        if type(value) not in (torch.Tensor, nn.Parameter):
            raise CheckpointError(f"{path}: weight {key} is a {type(value).__name__}, not a tensor; refusing it")
        if value.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{path}: weight {key} has dtype {value.dtype}; weights must be floating-point")
        if value.device.type != "cpu" or value.layout != torch.strided:
            raise CheckpointError(f"{path}: weight {key} is not a plain CPU tensor")
        if not value.is_contiguous() or (value.numel() > 1 and 0 in value.stride()):
            raise CheckpointError(
                f"{path}: weight {key} is a non-contiguous view (strides {value.stride()}); weights must be stored whole"
            )
        if value.numel():
            start = value.untyped_storage().data_ptr() + value.storage_offset() * value.element_size()
            spans.append((start, start + value.numel() * value.element_size(), key))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(
                f"{path}: weights {first} and {second} share memory; every weight must be stored on its own"
            )
    bad = next((k for k, v in state.items() if v.numel() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad} holds NaN or infinite values; the model would produce garbage")


def build_network(kind: str, unet: UNetConfig, state: Mapping[str, torch.Tensor], path: str | Path) -> nn.Module:
    """The network of ``kind``/``unet`` holding ``state`` (checked first), in float32, in eval mode."""
    architecture = f"{'ImageUNet' if kind == 'image' else 'MaskUNet'}"
    check_shapes(expected_shapes(kind, unet), {k: tuple(v.shape) for k, v in state.items()}, path, architecture)
    check_tensors(state, path)
    with torch.device("meta"):
        network = build_unet(kind, unet)
    if set(dict(network.named_buffers())) | set(dict(network.named_parameters())) != set(network.state_dict()):
        network = build_unet(kind, unet)  # a non-persistent buffer would stay uninitialised: build for real
    else:
        network = network.to_empty(device="cpu")
    with torch.no_grad():
        network.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return network.eval()
