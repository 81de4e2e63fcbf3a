"""Safe reading of the official DiffInfinite checkpoints (``model-N.pt``).

The official trainer saves ``{step, loss, lr, model, opt, scheduler, ema, scaler}`` with
``torch.save``. The optimiser and scheduler entries can hold pickled Python objects
(torch 2.0 pickled ``OneCycleLR`` through a bound method). Unpickling runs code, so this
module never lets a pickle call anything but the tensor-rebuilding functions of torch:

* an allow-list of globals is resolved for real (tensor and storage rebuilders, dtypes,
  ``OrderedDict``);
* globals of the training frameworks (``torch.*``, ``accelerate.*``, ``ema_pytorch.*``,
  ``builtins.getattr``, ``functools.partial``, ``copyreg``) become inert placeholders that
  record what they were and run nothing: they are what optimiser state looks like;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) refuses
  the whole file at once, before anything it names could run.

Only the EMA weights (``ema`` -> ``ema_model.model.*``) are used; they must be plain tensors.
"""

from __future__ import annotations

import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .config import UNetConfig

_REAL_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
}
for _name in ("_rebuild_parameter_with_state", "_rebuild_tensor_v3"):
    if hasattr(torch._utils, _name):
        _REAL_GLOBALS[("torch._utils", _name)] = getattr(torch._utils, _name)
for _dtype in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
):  # fmt: skip
    _REAL_GLOBALS[("torch", str(_dtype).removeprefix("torch."))] = _dtype

for _builtin in (dict, list, tuple, set, frozenset, slice, complex, bytearray, int, float, bool, str, bytes):
    _REAL_GLOBALS[("builtins", _builtin.__name__)] = _builtin
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

_INERT_ROOTS = ("torch", "accelerate", "ema_pytorch", "copyreg")
_INERT_NAMES = {("builtins", "getattr"), ("functools", "partial"), ("collections", "defaultdict")}


class InertObject:
    """Stands in for an object of a non-allow-listed class; it records and never runs."""

    origin = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.items[key] = value

    def append(self, value) -> None:
        self.items[len(self.items)] = value

    def extend(self, values) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<not loaded: {self.origin}>"


def _inert_class(module: str, name: str) -> type:
    return types.new_class(name, (InertObject,), exec_body=lambda ns: ns.update(origin=f"{module}.{name}"))


class UnsafeCheckpoint(CheckpointError):
    """The pickle names a global that could run code."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _REAL_GLOBALS:
            return _REAL_GLOBALS[(module, name)]
        if module.split(".")[0] in _INERT_ROOTS or (module, name) in _INERT_NAMES:
            return _inert_class(module, name)
        raise UnsafeCheckpoint(
            f"refusing to load: the file contains a pickled reference to {module}.{name}, which "
            "could run code when unpickled. DiffInfinite checkpoints hold only tensors and "
            "optimiser state; get the file from a trusted source or convert it where you trust it."
        )


class _SafePickleModule(types.ModuleType):
    Unpickler = _SafeUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _SafeUnpickler(file, **kwargs).load()


_safe_pickle = _SafePickleModule("napari_diffinfinite_safe_pickle")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a ``torch.save`` file without executing pickled code (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_safe_pickle)
    except UnsafeCheckpoint:
        raise
    except (zipfile.BadZipFile, EOFError, RuntimeError, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt? {type(exc).__name__}: {exc}). "
            "Download it again and compare its size and SHA-256 with the source."
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint dictionary")
    return data


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


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
        keys = ", ".join(sorted(map(str, data))[:10])
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
                        f"(e.g. {bad[0]}: {unet[bad[0]]!r}); refusing it"
                    )
                return unet, entry
    raise CheckpointError(f"{path}: no UNet weights under 'ema_model.model.' (EMA) or 'model.'")


def infer_unet(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> tuple[str, UNetConfig]:
    """Recover the kind ("image"/"mask") and architecture of a UNet from its weights' shapes."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key!r}; this is not a DiffInfinite UNet")
        return state[key]

    init = need("init_conv.weight")
    dim, channels = init.shape[0], init.shape[1]
    num_classes = need("classes_emb.weight").shape[0]
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("downs.")})
    if not levels:
        raise CheckpointError(f"{path}: no 'downs.*' layers; this is not a DiffInfinite UNet")
    block_per_layer = len({int(k.split(".")[2]) for k in state if k.startswith("downs.0.") and ".block1." in k})
    mults = []
    for level in levels:
        conv = need(f"downs.{level}.{block_per_layer + 1}.weight")
        if conv.shape[0] % dim:
            raise CheckpointError(
                f"{path}: downs.{level} has {conv.shape[0]} output channels, not a multiple of dim={dim}"
            )
        mults.append(conv.shape[0] // dim)
    attn_prefix = f"downs.0.{block_per_layer}.fn.fn."
    if attn_prefix + "to_q.weight" in state:
        kind, hidden = "image", state[attn_prefix + "to_q.weight"].shape[0]
    elif attn_prefix + "to_qkv.weight" in state:
        kind, hidden = "mask", state[attn_prefix + "to_qkv.weight"].shape[0] // 3
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


def load_state_strict(network: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` into ``network``; refuse with a message listing every difference."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError(
            f"{path} does not fit the {type(network).__name__} architecture it was identified as: "
            + "; ".join(parts)
        )
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
