"""``diffinfinite info``: describe a checkpoint, a model folder or a slide store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import engine
from ..errors import DiffInfiniteError
from ..model.pretrained import CONFIG_NAME, load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="describe a model (folder or model-N.pt) or a slide store")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


_ACCEPTS = (
    "info describes a slide store (a .zarr folder written by diffinfinite generate), a model folder "
    "(config.json + model.safetensors), an official DiffInfinite checkpoint (model-N.pt), or a diffusers "
    "pipeline or ControlNet folder"
)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _looks_like_checkpoint(path: Path) -> bool:
    """A file to hand to the model loader: a checkpoint suffix, or a zip (torch's format) by content."""
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_diffusers_folder(path: Path) -> bool:
    """A diffusers pipeline (model_index.json or unet/ + vae/) or a ControlNet folder (its config's class)."""
    if (path / "model_index.json").is_file() or ((path / "unet").is_dir() and (path / "vae").is_dir()):
        return True
    config = path / CONFIG_NAME
    if config.is_file() and config.stat().st_size < 1 << 20:
        try:
            return json.loads(config.read_text()).get("_class_name") == "ControlNetModel"
        except (OSError, ValueError, AttributeError, RecursionError):  # the model loader reports what is wrong
            return False
    return False


def describe_path(path: Path) -> dict:
    """What ``info`` prints for ``path``, decided by content; anything else is refused with what is accepted."""
    if not path.exists():
        raise DiffInfiniteError(f"{path} does not exist; {_ACCEPTS}")
    if path.is_file():
        if not _looks_like_checkpoint(path):
            raise DiffInfiniteError(f"{path} is neither a checkpoint nor a slide store; {_ACCEPTS}")
        return {"type": "model", **engine.describe_model(load_model(path))}
    if not path.is_dir():  # a device, a FIFO (/dev/null): neither a file to read nor a folder
        raise DiffInfiniteError(f"{path} is not a regular file or folder; {_ACCEPTS}")
    if _is_diffusers_folder(path):
        from ..diffusers_backend.model import describe_pipeline

        return describe_pipeline(path)
    if (path / CONFIG_NAME).is_file():
        return {"type": "model", **engine.describe_model(load_model(path))}
    if not ((path / ".zattrs").is_file() or (path / "zarr.json").is_file()):
        raise DiffInfiniteError(
            f"{path} is a folder with neither {CONFIG_NAME} (a model folder) nor zarr metadata (a slide store); {_ACCEPTS}"
        )
    from ..slide.store import SlideStore

    store = SlideStore.open(path)
    state = store.load_state() if (path / "diffinfinite").exists() else None
    prov = store.provenance
    return {
        "type": "slide store",
        "path": str(store.path),
        "size": f"{store.shape[1]}x{store.shape[0]}",
        "levels": [f"{w}x{h}" for h, w in store.level_shapes],
        "pixel_size_um": store.pixel_size_um,
        "classes": {str(i): n for i, n in enumerate(store.class_names)},
        # another tool's OME-Zarr has no such record: what it holds is all there is
        "complete": prov.get("complete", False) if prov else "unknown (not written by napari-diffinfinite)",
        "resumable_at_step": None if state is None or prov.get("complete") else state[1].get("step"),
        "provenance": prov,
    }


def run(args: argparse.Namespace) -> int:
    info = describe_path(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == "provenance":
            value = json.dumps(value, default=str)
        print(f"{key:>18}: {value}")
    return 0
