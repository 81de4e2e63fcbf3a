"""Builders of hostile and malformed model files for the safety tests.

Everything here writes into a directory the test gives it (pytest's ``tmp_path``); no hostile
file is ever committed. Payloads that would act if executed write a *sentinel* file, so a
test can assert that nothing ran by checking the sentinel is absent.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from napari_diffinfinite.model.pretrained import new_model
from napari_diffinfinite.testing import official_checkpoint_dict, tiny_image_config

# --------------------------------------------------------------------------- pickle payloads


class Call:
    """Pickles as a call of ``func(*args)``: what a hostile pickle asks the unpickler to run."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def shell(sentinel: Path) -> Call:
    """``os.system("touch SENTINEL")``."""
    return Call(os.system, f"touch {sentinel}")


class Storage:
    """A storage declaration: record ``data/<key>`` said to hold ``numel`` elements of ``kind``."""

    def __init__(self, key: str, numel: int, kind: Any = torch.FloatStorage) -> None:
        self.key, self.numel, self.kind = key, numel, kind


class Tensor:
    """A tensor as ``torch.save`` pickles it: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, self.offset, torch.Size(self.size), self.stride, False, OrderedDict()),
        )


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def pickle_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def deep_list_opcodes(depth: int) -> bytes:
    """Pickle opcodes (no framing) that build a list nested ``depth`` levels deep."""
    return b"]" * depth + b"a" * (depth - 1)


def splice(pickled: bytes, placeholder: str, opcodes: bytes) -> bytes:
    """Replace the pickled string ``placeholder`` by raw opcodes that push one object."""
    encoded = placeholder.encode()
    old = b"X" + struct.pack("<I", len(encoded)) + encoded
    assert pickled.count(old) == 1
    return pickled.replace(old, opcodes)


# --------------------------------------------------------------------------- torch zip files


def write_torch_zip(
    path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None, byteorder: bool = True
) -> Path:
    """A zip in torch.save's layout (``archive/data.pkl``, ``archive/data/N``, ...), as ``torch.load`` reads it.

    Written with :mod:`zipfile` (no 64-byte alignment padding), so that small hostile files stay small.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
        if byteorder:  # optional, as in files of torch < 1.13
            zf.writestr("archive/byteorder", "little")
        for name, payload in (records or {}).items():
            zf.writestr(f"archive/{name}", payload)
    return path


def write_pickled_zip(path: Path, obj: Any, records: dict[str, bytes] | None = None, byteorder: bool = True) -> Path:
    """``obj`` pickled as torch.save would (storages as persistent ids) into a torch zip.

    Storages of ``obj`` get records of their declared size unless ``records`` names them.
    """
    storages: dict[str, Storage] = {}

    class Collect(_Pickler):
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, Storage):
                storages[o.key] = o
            return super().persistent_id(o)

    Collect(io.BytesIO(), protocol=2).dump(obj)
    records = dict(records or {})
    all_records = {f"data/{k}": bytes(s.numel * 4) for k, s in storages.items() if f"data/{k}" not in records}
    all_records.update(records)
    return write_torch_zip(path, pickle_bytes(obj), all_records, byteorder)


def official_dict(seed: int = 0) -> dict:
    """The official trainer's dictionary around a tiny random-init image model (no scheduler object)."""
    model = new_model(tiny_image_config(codec="sd2-vae"), seed=seed)
    return official_checkpoint_dict(model, with_scheduler_object=False)


def save_official(path: Path, data: dict) -> Path:
    torch.save(data, path)
    return path


# --------------------------------------------------------------------------- TorchScript


class SentinelModule(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) writes ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.marker = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.marker = torch.from_file(self.target, True, 8, dtype=torch.uint8)
        self.marker.fill_(65)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.marker.sum()


def write_torchscript(path: Path, sentinel: Path) -> Path:
    torch.jit.save(torch.jit.script(SentinelModule(str(sentinel))), str(path))
    return path


# --------------------------------------------------------------------------- legacy tar


def write_tar_with_hardlink(path: Path, victim: Path, fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A legacy tar-format ``.pt`` whose ``storages`` member is a hard link to ``victim``.

    Extracting it (torch's legacy loader does, without a filter) links to the victim and then
    applies the member's mode 6777 and timestamp 0 to it.
    """
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in (("sys_info", pickle.dumps({"little_endian": True})), ("pickle", pickle.dumps({}))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("storages")
        link.type = tarfile.LNKTYPE
        link.linkname = str(victim)
        link.mode = 0o6777
        link.mtime = 0
        tar.addfile(link)
    return path


# --------------------------------------------------------------------------- safetensors


def safetensors_bytes(header: dict, data: bytes, header_size: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if header_size is None else header_size) + raw + data
