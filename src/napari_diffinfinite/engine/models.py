"""Devices, precisions and the models a user picked: resolved and loaded once, in one place.

``load_models`` is what the CLI, the widgets and ``generate-many`` call; ``load_image_model``,
``load_mask_model`` and ``load_codec`` load one piece each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..demo import demo_image_config, demo_mask_config, demo_model_dir
from ..errors import CheckpointError, SettingsError
from ..model.codec import Codec, make_codec
from ..model.pretrained import DiffusionModel, load_model, new_model

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # fmt: skip

#: A model given by path (our folder or an official ``model-N.pt``), ``None``/"default" for
#: the embedded demo, or an already loaded model.
ModelSpec = str | Path | DiffusionModel | None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or short names, or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise SettingsError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise SettingsError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype, as recorded in provenance ("float32", "bfloat16", ...)."""
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def available_devices() -> list[str]:
    """Devices to offer, best first: "cuda" when a GPU is visible, then "cpu"."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A usable torch device for ``device`` ("auto"/None = the best available), or SettingsError."""
    if device is None or str(device) == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingsError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {device!r}: no GPU is visible to torch; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SettingsError(f"device {device!r}: only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SettingsError(f"device {device!r}: Apple MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise SettingsError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def _load(path: str | Path | None, kind: str, device: str | None, dtype: str | torch.dtype,
          num_labels: int | None = None) -> DiffusionModel:  # fmt: skip
    dev = resolve_device(device)
    precision = resolve_dtype(dtype)
    if path is None or str(path) == "default":
        folder = demo_model_dir(kind)
        if (folder / "config.json").is_file():
            return load_model(folder, expect=kind, device=dev, dtype=precision)
        config = demo_image_config() if kind == "image" else demo_mask_config()
        log.warning("no trained demo %s model is installed; using a random-init model of the demo architecture", kind)
        model = new_model(config, seed=0, source=f"random-init demo {kind} model (untrained: output is noise)")
        return model.to(dev, precision)
    return load_model(path, expect=kind, num_labels=num_labels, device=dev, dtype=precision)


def load_image_model(
    path: str | Path | None = None, *, device: str | None = "cpu", dtype: str | torch.dtype = "float32"
) -> DiffusionModel:
    """Load an image model (our folder or an official ``model-N.pt``); ``None`` = embedded demo.

    The weights are cast to ``dtype`` (bfloat16/float16 halve their memory); the sampler runs
    the network under autocast at the same precision.
    """
    return _load(path, "image", device, dtype)


def load_mask_model(
    path: str | Path | None = None,
    *,
    device: str | None = "cpu",
    dtype: str | torch.dtype = "float32",
    num_labels: int | None = None,
) -> DiffusionModel:
    """Load a mask (layout) model; ``None`` = embedded demo. Weights are cast to ``dtype``."""
    return _load(path, "mask", device, dtype, num_labels)


def load_codec(
    spec: str | Path | None, model: DiffusionModel, *, device: str | None = "cpu", dtype: str | torch.dtype = "float32"
) -> Codec:
    """The codec ``model`` works with; ``spec`` is a VAE folder (latent models) or "identity".

    On a CPU the VAE stays in float32 (reduced precision there is slower, not faster).
    """
    config = model.config
    if spec is not None and str(spec) == "identity" and config.codec != "identity":
        raise CheckpointError(f"{model.source} works in SD-2 VAE latents; it cannot use the identity codec")
    dev = resolve_device(device)
    return make_codec(
        config.codec,
        None if spec in (None, "identity") else spec,
        latent_scale=config.latent_scale,
        pixel_unshuffle=config.pixel_unshuffle,
        device=dev,
        dtype=torch.float32 if dev.type == "cpu" else resolve_dtype(dtype),
    )


@dataclass
class LoadedModels:
    """The models of one generation job, loaded once: the image model and its codec, and the
    mask model and its codec when the layout is sampled."""

    image: DiffusionModel
    codec: Codec
    mask: DiffusionModel | None = None
    mask_codec: Codec | None = None


def _as_model(spec: ModelSpec, kind: str, device: str | None, dtype: str | torch.dtype,
              num_labels: int | None = None) -> DiffusionModel:  # fmt: skip
    if isinstance(spec, DiffusionModel):
        if spec.config.kind != kind:
            raise CheckpointError(f"{spec.source} is a {spec.config.kind} model, but a {kind} model is needed here")
        return spec.to(resolve_device(device), resolve_dtype(dtype))
    if kind == "image":
        return load_image_model(spec, device=device, dtype=dtype)
    return load_mask_model(spec, device=device, dtype=dtype, num_labels=num_labels)


def load_models(
    image_model: ModelSpec = None,
    *,
    vae: str | Path | Codec | None = None,
    mask_model: ModelSpec | bool = False,
    num_labels: int | None = None,
    device: str | None = "cpu",
    dtype: str | torch.dtype = "float32",
) -> LoadedModels:
    """Load the image model (``None`` = demo), its codec, and the mask model if one is asked for.

    ``mask_model``: ``False`` = none; ``None``/"default" = the demo mask model; a path or a
    loaded model. ``vae`` is the SD-2 VAE folder for latent models (or a loaded codec).
    ``num_labels`` sets the label levels of an official mask model. Raises CheckpointError /
    SettingsError with the fix when a model cannot be used as asked.
    """
    image = _as_model(image_model, "image", device, dtype)
    codec = (
        vae
        if vae is not None and not isinstance(vae, (str, Path))
        else load_codec(vae, image, device=device, dtype=dtype)
    )
    models = LoadedModels(image=image, codec=codec)
    if mask_model is not False:
        mask = _as_model(mask_model, "mask", device, dtype, num_labels)
        names = image.config.class_names
        if len(mask.config.class_names) != len(names):
            raise CheckpointError(
                f"the mask model produces {len(mask.config.class_names)} labels but the image model has "
                f"{len(names)} classes; use a matching mask model (or --num-labels {len(names)} for an official one)"
            )
        models.mask = mask
        models.mask_codec = load_codec(vae if isinstance(vae, (str, Path)) else None, mask, device=device, dtype=dtype)
    return models


def describe_model(model: DiffusionModel) -> dict[str, Any]:
    """What a user wants to see about a loaded model."""
    c = model.config
    u = c.unet
    return {
        "kind": c.kind,
        # a mask model's classes are its conditions ("any", "tissue"), not the layout's labels
        "architecture": f"{'ImageUNet' if c.kind == 'image' else 'MaskUNet'}(dim={u.dim}, dim_mults={u.dim_mults}, "
        f"channels={u.channels}, {'num_classes' if c.kind == 'image' else 'conditions'}={u.num_classes})",
        "codec": c.codec
        if c.codec != "identity" or c.pixel_unshuffle == 1
        else f"identity (pixel unshuffle {c.pixel_unshuffle})",
        "patch_size": c.patch_size,
        "num_classes": len(c.class_names),
        "class_names": list(c.class_names),
        "class_colors": [tuple(col) for col in c.class_colors],
        "parameters": model.num_parameters,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "source": model.source,
        "sha256": model.sha256,
        "pixel_size_um": c.pixel_size_um,
        "sampling_steps": c.sampling_steps,
        **({"default_omega": c.default_omega} if c.default_omega is not None else {}),
        **({"objective": c.objective} if c.objective != "pred_noise" else {}),
        **({"mask_encoding": c.mask_encoding, "layout": _layout_scale(c)} if c.kind == "mask" else {}),
        **(
            {
                "cascade": f"stage at {c.cascade['parent_scale']}x the magnification below, conditioned on its "
                f"{c.cascade['condition']}"
            }
            if c.cascade
            else {}
        ),  # fmt: skip
    }


def _layout_scale(c) -> str:
    """Where a mask model samples its layout and where the layout canvas ends up, for ``info``."""
    text = f"sampled at 1/{c.mask_downsample} of the slide"
    if c.layout_upsample > 1:
        canvas = c.mask_downsample // c.layout_upsample
        text += (
            f", upsampled {c.layout_upsample}x: a canvas at 1/{canvas}" if canvas > 1 else ", upsampled to the slide"
        )
    if c.pixel_size_um:
        text += f" ({c.pixel_size_um * c.mask_downsample / c.layout_upsample:g} um/px)"
    return text
