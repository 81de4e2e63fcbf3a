"""The official DiffInfinite checkpoints (``model-N.pt``): reading, picking the weights, naming the architecture.

The official trainer saves ``{step, loss, lr, model, opt, scheduler, ema, scaler}`` with
``torch.save`` (torch 2.0, zip format). :func:`read_checkpoint` reads it without running
anything it names (see :mod:`.torch_file`); only the EMA weights (``ema`` ->
``ema_model.model.*``) are used, and :func:`infer_unet` recovers the architecture from their
shapes alone, checked against the caps of :meth:`ModelConfig.validate` before any network is
built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .config import UNetConfig
from .torch_file import read_torch_file

_LEVEL_KEY = re.compile(r"downs\.(\d{1,3})\.")
_BLOCK_KEY = re.compile(r"downs\.0\.(\d{1,3})\.block1\.")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a ``torch.save`` checkpoint dictionary without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    data = read_torch_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a {type(data).__name__}, not a checkpoint dictionary; expected an official "
            "DiffInfinite model-N.pt (a dict with 'ema' and 'model' entries)"
        )
    return data


def _strip(state: dict[Any, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def extract_unet_state(data: dict[str, Any], path: str | Path = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """The denoising UNet's weights from an official checkpoint, preferring the EMA weights.

    Returns the state dict and which entry it came from ("ema", "model" or "state_dict").
    """
    candidates = []
    if "ema" in data:
        candidates.append(("ema", data["ema"], ("ema_model.model.", "module.ema_model.model.")))
    if "model" in data:
        candidates.append(("model", data["model"], ("model.", "module.model.")))
    if "init_conv.weight" in data:
        candidates.append(("state_dict", data, ("",)))
    if not candidates:
        keys = ", ".join(sorted(str(k)[:40] for k in data)[:10])
        raise CheckpointError(
            f"{path} has no DiffInfinite weights: expected an 'ema' or 'model' entry (official "
            f"model-N.pt) or a UNet state dict, found keys: {keys}"
        )
    for entry, state, prefixes in candidates:
        if not isinstance(state, dict):
            raise CheckpointError(f"the '{entry}' entry of {path} is a {type(state).__name__}, not a state dict")
        for prefix in prefixes:
            unet = _strip(state, prefix)
            if unet:
                bad = sorted(k for k, v in unet.items() if not isinstance(v, torch.Tensor))
                if bad:
                    raise CheckpointError(
                        f"the '{entry}' entry of {path} holds pickled objects instead of tensors "
                        f"(e.g. {bad[0]}: a {type(unet[bad[0]]).__name__}); refusing it"
                    )
                return unet, entry
    raise CheckpointError(f"{path}: no UNet weights under 'ema_model.model.' (EMA) or 'model.'")


def infer_unet(shapes: dict[str, tuple[int, ...]], path: str | Path = "checkpoint") -> tuple[str, UNetConfig]:
    """Recover the kind ("image"/"mask") and architecture of a UNet from its weights' shapes.

    The result is only a claim: the caller validates it (:meth:`ModelConfig.validate` caps)
    and compares every key and shape with the network it describes before building it.
    """

    def need(key: str, ndim: int) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{path}: missing key {key!r}; this is not a DiffInfinite UNet")
        if len(shapes[key]) != ndim:
            raise CheckpointError(f"{path}: {key} has shape {tuple(shapes[key])}, not a {ndim}-d weight")
        return tuple(shapes[key])

    dim, channels = need("init_conv.weight", 4)[:2]
    num_classes = need("classes_emb.weight", 2)[0]
    levels = sorted({int(m.group(1)) for k in shapes if (m := _LEVEL_KEY.match(k))})
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{path}: no consecutive 'downs.*' layers; this is not a DiffInfinite UNet")
    block_per_layer = len({int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))})
    mults = []
    for level in levels:
        out_channels = need(f"downs.{level}.{block_per_layer + 1}.weight", 4)[0]
        if dim == 0 or out_channels % dim:
            raise CheckpointError(
                f"{path}: downs.{level} has {out_channels} output channels, not a multiple of dim={dim}"
            )
        mults.append(out_channels // dim)
    attn_prefix = f"downs.0.{block_per_layer}.fn.fn."
    if attn_prefix + "to_q.weight" in shapes:
        kind, hidden = "image", need(attn_prefix + "to_q.weight", 4)[0]
    elif attn_prefix + "to_qkv.weight" in shapes:
        kind, hidden = "mask", need(attn_prefix + "to_qkv.weight", 4)[0] // 3
    else:
        raise CheckpointError(f"{path}: no attention block at {attn_prefix}*; this is not a DiffInfinite UNet")
    heads = 4
    return kind, UNetConfig(
        dim=dim,
        dim_mults=tuple(mults),
        channels=channels,
        num_classes=num_classes,
        block_per_layer=block_per_layer,
        attention_heads=heads,
        attention_dim_head=hidden // heads,
    )
