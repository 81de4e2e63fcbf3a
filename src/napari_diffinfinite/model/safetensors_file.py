"""Reading ``model.safetensors`` with its header checked before any tensor is read.

Safetensors cannot carry code, but its header is still input: a header size beyond the file,
a multi-gigabyte header, shapes that do not match their byte ranges, ranges outside the file or
overlapping each other are refused here with a message, before the ``safetensors`` library (or
the caller's comparison with the expected architecture) touches the data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from .config import refuse_json_constant

MAX_HEADER_BYTES = 16 << 20  # a DiffInfinite UNet's header is ~50 kB
MAX_DIMS = 16
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file ({problem}). Write the model folder again "
        "(diffinfinite convert, or save_pretrained) or get it again from its source."
    )


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file declares, every entry checked against the file's size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size < 8:
                raise _refuse(path, f"{size} bytes, shorter than the 8-byte header size")
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > min(MAX_HEADER_BYTES, size - 8):
                raise _refuse(path, f"the header claims {header_size:,} bytes of a {size:,}-byte file")
            raw = f.read(header_size)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise _refuse(path, f"the header is not JSON: {str(exc)[:100]}") from None
    if not isinstance(header, dict):
        raise _refuse(path, "the header is not a JSON object")
    data_size = size - 8 - header_size
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _refuse(path, "__metadata__ must map names to strings")
            continue
        entries[name] = _entry(path, name, entry, data_size)
    spans = sorted((e.begin, e.end, n) for n, e in entries.items() if e.end > e.begin)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise _refuse(path, f"tensors {first} and {second} overlap")
    return entries


def _entry(path: Path, name: str, entry: object, data_size: int) -> TensorEntry:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _refuse(path, f"entry {name!r:.80} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise _refuse(path, f"tensor {name!r:.80} has the unsupported dtype {dtype!r:.20}")

    def is_count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(is_count(v) for v in shape):
        raise _refuse(path, f"tensor {name!r:.80} has a malformed shape {shape!r:.60}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(v) for v in offsets):
        raise _refuse(path, f"tensor {name!r:.80} has malformed data_offsets {offsets!r:.60}")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise _refuse(path, f"tensor {name!r:.80} lies at bytes {begin}-{end}, outside the {data_size:,} data bytes")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise _refuse(path, f"tensor {name!r:.80} of shape {tuple(shape)} needs {nbytes:,} bytes, not {end - begin:,}")
    return TensorEntry(DTYPES[dtype], tuple(shape), begin, end)


def read_tensors(path: str | Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Read the named tensors (call after :func:`read_header` and checking the shapes)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise _refuse(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
