"""Checking weights against the architecture they claim, then building the network from them.

The network is first built on the ``meta`` device (no memory): its keys and shapes are what
the weights must match, so a file is refused before a single real parameter is allocated. The
weights actually used must be floating-point, finite, contiguous and stored apart from each
other; then the meta network takes float32 copies of them (no random initialisation).
Together with the caps of :meth:`ModelConfig.validate`, the network built can never be larger
than the weights the file really holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CheckpointError
from .config import UNetConfig
from .unet import build_unet

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Shapes = Mapping[str, tuple[int, ...]]


_INIT_FUNCTIONS = {
    getattr(torch.nn.init, name) for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")
} | {torch.Tensor.normal_, torch.Tensor.uniform_}


class _SkipInit(TorchFunctionMode):
    """Skips random initialisation while a network is built on the meta device.

    The values are overwritten by the checkpoint anyway, and ``normal_``/``randn`` on meta
    tensors go through Python decompositions whose first use imports ``torch._dynamo`` and
    ``sympy`` (seconds). A
    function mode is thread-local, so networks built in other threads are unaffected.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INIT_FUNCTIONS:
            return args[0] if args else kwargs["tensor"]
        if func in (torch.randn, torch.rand):  # likewise (sympy) for random factories: an empty tensor will do
            func = torch.empty
        return func(*args, **(kwargs or {}))


def meta_network(kind: str, unet: UNetConfig) -> nn.Module:
    """The network of ``kind``/``unet`` on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _SkipInit():
        return build_unet(kind, unet)


def expected_shapes(kind: str, unet: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the network's state dict and its shape, without allocating the network."""
    return {key: tuple(value.shape) for key, value in meta_network(kind, unet).state_dict().items()}


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


def architecture_name(kind: str) -> str:
    return "ImageUNet" if kind == "image" else "MaskUNet"


def build_network(kind: str, unet: UNetConfig, state: Mapping[str, torch.Tensor], path: str | Path) -> nn.Module:
    """The network of ``kind``/``unet`` holding ``state`` (checked first), in float32, in eval mode."""
    network = meta_network(kind, unet)
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    check_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, path, architecture_name(kind))
    check_tensors(state, path)
    # float32 copies the network owns (the file's tensors may be a memory map of it)
    weights = {k: v.to(torch.float32, copy=True) for k, v in state.items()}
    if set(dict(network.named_buffers())) | set(dict(network.named_parameters())) != set(expected):
        network = build_unet(kind, unet)  # a non-persistent buffer would stay on meta: build for real
        network.load_state_dict(weights, strict=True)
    else:
        network.load_state_dict(weights, strict=True, assign=True)  # meta tensors replaced, nothing initialised
    return network.eval()
