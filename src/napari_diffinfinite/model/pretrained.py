"""Loading and saving models: our folder format and the official checkpoints.

Our format is a folder with ``config.json`` (a :class:`ModelConfig`) and
``model.safetensors`` (the UNet weights). Safetensors cannot carry code, and the config
says everything needed to use the weights, so it is what we ship and what
``diffinfinite convert`` writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .checkpoint import extract_unet_state, infer_unet, load_state_strict, read_checkpoint
from .config import ModelConfig, default_class_colors, default_class_names, official_config
from .unet import ImageUNet, MaskUNet, build_unet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class DiffusionModel:
    """A loaded network with its configuration and where it came from."""

    config: ModelConfig
    unet: ImageUNet | MaskUNet
    sha256: str
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def num_parameters(self) -> int:
        return self.unet.num_parameters

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusionModel:
        self.unet.to(device=device, dtype=dtype)
        return self


def new_model(config: ModelConfig, seed: int = 0, source: str = "random-init") -> DiffusionModel:
    """A randomly initialised model of ``config`` (for tests, benchmarks and training)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(config.kind, config.unet)
    return DiffusionModel(config=config, unet=unet.eval(), sha256="", source=source)


def save_pretrained(model: DiffusionModel, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``, atomically."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise CheckpointError(f"{folder} already exists; choose another folder or pass overwrite=True")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.unet.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "kind": model.config.kind})
        model.config.save(tmp / CONFIG_NAME)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _load_folder(folder: Path) -> DiffusionModel:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(
                f"{folder} is not a napari-diffinfinite model folder: {needed.name} is missing "
                "(expected config.json + model.safetensors; official checkpoints are model-N.pt files)"
            )
    config = ModelConfig.load(config_path)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file (truncated or corrupt?): {exc}")
    unet = build_unet(config.kind, config.unet)
    load_state_strict(unet, state, weights_path)
    return DiffusionModel(config=config, unet=unet.eval(), sha256=sha256_file(weights_path), source=str(folder))


def _load_official(path: Path, num_labels: int | None) -> DiffusionModel:
    data = read_checkpoint(path)
    state, _entry = extract_unet_state(data, path)
    kind, unet_config = infer_unet(state, path)
    config = official_config(kind, unet_config)
    if kind == "mask" and num_labels:
        config.num_labels = num_labels
        config.class_names = default_class_names(num_labels)
        config.class_colors = default_class_colors(num_labels)
        config.validate()
    unet = build_unet(kind, unet_config)
    load_state_strict(unet, state, path)
    return DiffusionModel(config=config, unet=unet.eval(), sha256=sha256_file(path), source=str(path))


def load_model(
    path: str | Path,
    *,
    expect: str | None = None,
    num_labels: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionModel:
    """Load a model from our folder format or an official ``model-N.pt``.

    ``expect`` ("image" or "mask") refuses a model of the other kind with a clear message.
    ``num_labels`` sets the number of label levels of an official mask model (5 or 10), which
    its checkpoint does not record.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        model = _load_folder(path)
    elif path.is_file():
        model = _load_official(path, num_labels)
    else:
        raise CheckpointError(f"model path {path} does not exist")
    if expect and model.config.kind != expect:
        raise CheckpointError(
            f"{path} is a {model.config.kind} model (it {_describe_kind(model.config.kind)}), but an "
            f"{expect} model is expected here"
        )
    return model.to(device=device, dtype=dtype)


def _describe_kind(kind: str) -> str:
    return "samples tissue layouts" if kind == "mask" else "generates images from a layout"


def convert_official(
    checkpoint: str | Path,
    out: str | Path,
    *,
    class_names: list[str] | None = None,
    class_colors: list[tuple[int, int, int]] | None = None,
    pixel_size_um: float | None = None,
    num_labels: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official ``model-N.pt`` to our folder format (EMA weights only)."""
    model = load_model(checkpoint, num_labels=num_labels)
    data = model.config.to_dict()
    if class_names is not None:
        data["class_names"] = list(class_names)
    if class_colors is not None:
        data["class_colors"] = [list(c) for c in class_colors]
    if pixel_size_um is not None:
        data["pixel_size_um"] = pixel_size_um
    data["description"] = f"converted from {Path(checkpoint).name} (sha256 {model.sha256})"
    model.config = ModelConfig.from_dict(data)
    return save_pretrained(model, out, overwrite=overwrite)
