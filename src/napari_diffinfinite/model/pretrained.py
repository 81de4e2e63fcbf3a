"""Loading and saving models: our folder format and the official checkpoints.

Our format is a folder with ``config.json`` (a :class:`ModelConfig`, plus the marker
``"written_by": "napari-diffinfinite"``) and ``model.safetensors`` (the UNet weights).
Safetensors cannot carry code, and the config says everything needed to use the weights, so
it is what we ship and what ``diffinfinite convert`` writes.

Every path in is checked before anything is built: the configuration by
:meth:`ModelConfig.validate` (the one check ``info``, ``convert`` and ``generate`` share), the
weights' keys and shapes against the network that configuration describes
(:mod:`.weights`). Writing goes to a hidden temporary sibling renamed into place, and
``overwrite`` replaces only a model folder this tool wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError, DiffInfiniteError
from ..slide.atomic import make_temporary, remove_path, remove_stale_temporaries
from .checkpoint import extract_unet_state, infer_unet, read_checkpoint
from .config import (
    MAX_CLASSES,
    WRITTEN_BY,
    WRITTEN_BY_KEY,
    ModelConfig,
    official_config,
)
from .safetensors_file import read_header, read_tensors
from .torch_file import MALFORMED_ERRORS
from .unet import ImageUNet, MaskUNet, build_unet
from .weights import architecture_name, build_network, check_shapes, expected_shapes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# What a model folder of ours holds (the trainer adds samples.png to its checkpoints).
FOLDER_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "samples.png"})


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


def is_our_model_folder(folder: str | Path) -> str | None:
    """Why ``folder`` may not be replaced, or None when it is a model folder this tool wrote.

    Ours: a real folder (not a link) holding only regular files among :data:`FOLDER_FILES`,
    whose ``config.json`` carries the ``written_by`` marker. Nothing is followed out of it.
    """
    folder = Path(folder)
    if folder.is_symlink():
        return "it is a symbolic link"
    if not folder.is_dir():
        return "it is not a folder"
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror or exc})"
    for entry in entries:
        if entry.name not in FOLDER_FILES:
            return f"it holds {entry.name!r}, which a model folder of ours never holds"
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            return f"its {entry.name} is not a regular file"
    try:
        with open(folder / CONFIG_NAME, "rb") as f:
            config = json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return f"it has no readable {CONFIG_NAME}"
    if not isinstance(config, dict) or config.get(WRITTEN_BY_KEY) != WRITTEN_BY:
        return f"its {CONFIG_NAME} does not say it was written by {WRITTEN_BY}"
    return None


def save_pretrained(model: DiffusionModel, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``, atomically.

    The files are written to a hidden temporary sibling and renamed into place, so ``folder``
    never holds a partial model; temporaries of ``folder`` left by a killed earlier run are
    removed first. An existing ``folder`` is replaced only with ``overwrite`` and only if this
    tool wrote it (:func:`is_our_model_folder`).
    """
    folder = Path(folder).expanduser().absolute()
    model.config.validate()
    if folder.exists() or folder.is_symlink():
        if not overwrite:
            raise CheckpointError(
                f"{folder} already exists; choose another folder or pass overwrite=True (--overwrite)"
            )
        reason = is_our_model_folder(folder)
        if reason:
            raise CheckpointError(
                f"refusing to overwrite {folder}: {reason}, so it is not a model folder napari-diffinfinite "
                "wrote. Choose another output folder, or remove it yourself if you mean to replace it."
            )
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create {folder.parent}: {exc.strerror or exc}") from None
    remove_stale_temporaries(folder)
    tmp = make_temporary(folder, directory=True)
    try:
        config = {**model.config.to_dict(), WRITTEN_BY_KEY: WRITTEN_BY}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.unet.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "kind": model.config.kind})
        # safetensors creates its file with mode 0600 whatever the umask; give the weights the
        # mode the umask gave config.json, so that a shared model folder is readable as usual
        os.chmod(tmp / WEIGHTS_NAME, (tmp / CONFIG_NAME).stat().st_mode & 0o777)
        _replace(tmp, folder)
    except BaseException as exc:
        remove_path(tmp)
        if isinstance(exc, OSError):  # disk full, permissions, a file in the way
            raise CheckpointError(f"cannot write {folder}: {exc.strerror or exc}") from None
        raise
    return folder


def _replace(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing folder (already checked) is moved aside, then removed."""
    if not (folder.exists() or folder.is_symlink()):
        os.replace(tmp, folder)
        return
    aside = make_temporary(folder, directory=True)  # an empty folder that a folder can be renamed over
    os.replace(folder, aside)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    remove_path(aside)


def _load_folder(folder: Path) -> DiffusionModel:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(
                f"{folder} is not a napari-diffinfinite model folder: {needed.name} is missing "
                "(expected config.json + model.safetensors; official checkpoints are model-N.pt files)"
            )
    config = ModelConfig.load(config_path)
    header = read_header(weights_path)
    found = {k: e.shape for k, e in header.items()}
    check_shapes(expected_shapes(config.kind, config.unet), found, weights_path, architecture_name(config.kind))
    state = read_tensors(weights_path, header)
    unet = build_network(config.kind, config.unet, state, weights_path)
    return DiffusionModel(config=config, unet=unet, sha256=sha256_file(weights_path), source=str(folder))


def _load_official(path: Path, num_labels: int | None) -> DiffusionModel:
    data = read_checkpoint(path)
    state, _entry = extract_unet_state(data, path)
    kind, unet_config = infer_unet({k: tuple(v.shape) for k, v in state.items()}, path)
    if kind == "image" and num_labels is not None:
        raise CheckpointError(
            f"{path} is an image model; a number of labels (--num-labels) applies only to official mask models"
        )
    config = official_config(kind, unet_config, num_labels=num_labels)
    unet = build_network(kind, unet_config, state, path)
    return DiffusionModel(config=config, unet=unet, sha256=sha256_file(path), source=str(path))


def _check_arguments(expect: str | None, num_labels: int | None) -> None:
    if expect not in (None, "image", "mask"):
        raise CheckpointError(f"expect must be 'image' or 'mask', not {expect!r}")
    if num_labels is not None and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or not 2 <= num_labels <= MAX_CLASSES
    ):
        raise CheckpointError(
            f"the number of labels (--num-labels) must be an integer from 2 to {MAX_CLASSES}, got {num_labels!r}; "
            "official mask models draw 5 or 10"
        )


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
    its checkpoint does not record (our folders record it, and it is ignored for them).
    Anything wrong with the file is a :class:`CheckpointError` naming the problem; nothing in
    the file runs, and nothing is allocated before the weights are checked against their
    architecture.
    """
    _check_arguments(expect, num_labels)
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            model = _load_folder(path)
        elif path.is_file():
            model = _load_official(path, num_labels)
        else:
            raise CheckpointError(f"model path {path} does not exist")
    except DiffInfiniteError:
        raise
    except MALFORMED_ERRORS as exc:
        raise CheckpointError(
            f"{path} is not a usable DiffInfinite model ({type(exc).__name__}: {str(exc)[:200]}); "
            "get it again from its source"
        ) from None
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
    """Convert an official ``model-N.pt`` to our folder format (EMA weights only).

    The result passes the same validation as every loaded model, before anything is written.
    """
    model = load_model(checkpoint, num_labels=num_labels)
    data = model.config.to_dict()
    if class_names is not None:
        data["class_names"] = list(class_names)
    if class_colors is not None:
        data["class_colors"] = [list(c) if isinstance(c, (list, tuple)) else c for c in class_colors]
    if pixel_size_um is not None:
        data["pixel_size_um"] = pixel_size_um
    data["description"] = f"converted from {Path(checkpoint).name} (sha256 {model.sha256})"
    model.config = ModelConfig.from_dict(data)
    return save_pretrained(model, out, overwrite=overwrite)
