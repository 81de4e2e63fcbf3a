"""The engine API: load models, sample layouts, generate slides into a slide store.

Everything the CLI and the napari widgets do goes through these functions; they take a
progress callback and a cancel token and never import Qt or napari.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .demo import demo_image_config, demo_mask_config, demo_model_dir
from .errors import CheckpointError, MaskError, StoreError
from .model.codec import Codec, make_codec
from .model.pretrained import DiffusionModel, load_model, new_model
from .progress import CancelToken, ProgressCallback, ProgressEvent, report
from .sampling import mask_sampler
from .sampling.decode import decode_tiles
from .sampling.preview import preview_rgb
from .sampling.sampler import RandomPatchSampler, SamplerState
from .slide.masks import MaskSource, latent_labels, validate_labels
from .slide.store import SlideStore

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}") from None


def available_devices() -> list[str]:
    """Devices to offer, best first: "cuda" when a GPU is visible, then "cpu"."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device(available_devices()[0])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("CUDA was requested but no GPU is visible to torch; use --device cpu")
    return dev


def _load(path, kind: str, device, dtype, num_labels=None) -> DiffusionModel:
    device = resolve_device(device)
    if path is None or str(path) == "default":
        folder = demo_model_dir(kind)
        if (folder / "config.json").is_file():
            return load_model(folder, expect=kind, device=device)
        config = demo_image_config() if kind == "image" else demo_mask_config()
        log.warning("no trained demo %s model is installed; using a random-init model of the demo architecture", kind)
        return new_model(config, seed=0, source=f"random-init demo {kind} model (untrained: output is noise)").to(device)
    # weights stay in float32; reduced precision is applied with autocast while sampling
    return load_model(path, expect=kind, num_labels=num_labels, device=device)


def load_image_model(path: str | Path | None = None, *, device: str | None = "cpu", dtype: str = "float32") -> DiffusionModel:
    """Load an image model (our folder or an official ``model-N.pt``); ``None`` = embedded demo."""
    return _load(path, "image", device, dtype)


def load_mask_model(
    path: str | Path | None = None, *, device: str | None = "cpu", dtype: str = "float32", num_labels: int | None = None
) -> DiffusionModel:
    """Load a mask (layout) model; ``None`` = embedded demo."""
    return _load(path, "mask", device, dtype, num_labels)


def load_codec(spec: str | Path | None, model: DiffusionModel, *, device: str | None = "cpu", dtype: str = "float32") -> Codec:
    """The codec ``model`` works with; ``spec`` is a VAE folder (latent models) or "identity"."""
    config = model.config
    if spec is not None and str(spec) == "identity" and config.codec != "identity":
        raise CheckpointError(f"{model.source} works in SD-2 VAE latents; it cannot use the identity codec")
    return make_codec(
        config.codec,
        None if spec in (None, "identity") else spec,
        latent_scale=config.latent_scale,
        pixel_unshuffle=config.pixel_unshuffle,
        device=resolve_device(device),
        dtype=torch.float32 if resolve_device(device).type == "cpu" else resolve_dtype(dtype),
    )


def describe_model(model: DiffusionModel) -> dict[str, Any]:
    """What a user wants to see about a loaded model."""
    c = model.config
    u = c.unet
    return {
        "kind": c.kind,
        "architecture": f"{'ImageUNet' if c.kind == 'image' else 'MaskUNet'}(dim={u.dim}, dim_mults={u.dim_mults}, "
        f"channels={u.channels}, num_classes={u.num_classes})",
        "codec": c.codec if c.codec != "identity" or c.pixel_unshuffle == 1 else f"identity (pixel unshuffle {c.pixel_unshuffle})",
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
    }


@dataclass
class GenerateSettings:
    """Sampling settings; ``steps``/``eta`` ``None`` take the model's defaults."""

    steps: int | None = None
    omega: float = 3.0
    eta: float | None = None
    seed: int = 0
    batch_size: int | None = None
    device: str | None = "cpu"
    dtype: str = "float32"
    checkpoint_every_s: float = 60.0


def latent_shape(size: tuple[int, int], model: DiffusionModel, codec: Codec) -> tuple[int, int]:
    """The latent canvas for a slide of ``size``: covers the slide, at least one patch."""
    s, p = codec.scale_factor, model.config.latent_patch
    return max(-(-size[0] // s), p), max(-(-size[1] // s), p)


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" (or a single number for a square) -> (H, W)."""
    try:
        parts = [int(v) for v in text.lower().replace(" ", "").split("x")]
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 2048x2048") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 2048x2048")
    return parts[1], parts[0]


def _provenance(image_model: DiffusionModel, codec: Codec, settings: GenerateSettings, steps: int, eta: float,
                mask_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    c = image_model.config
    return {
        "software": "napari-diffinfinite",
        "version": __version__,
        "image_model": {"source": image_model.source, "sha256": image_model.sha256},
        "codec": codec.name if c.pixel_unshuffle == 1 else f"{codec.name}/unshuffle{c.pixel_unshuffle}",
        "seed": settings.seed,
        "steps": steps,
        "omega": settings.omega,
        "cond_scale": settings.omega + 1.0,
        "eta": eta,
        "patch_size": c.patch_size,
        "sampler": "parallel random-patch DDIM",
        "mask": mask_info,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_RESUME_KEYS = ("seed", "steps", "omega", "eta", "patch_size")


def generate_slide(
    out: str | Path,
    size: tuple[int, int],
    *,
    image_model: DiffusionModel,
    codec: Codec,
    mask: MaskSource,
    settings: GenerateSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    mask_info: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlideStore:
    """Generate a synthetic slide of ``size`` (H, W) conditioned on ``mask`` into ``out``.

    Stages: labels are written, the latent is sampled (progress stage "sample", with a
    low-resolution preview per step), then decoded tile by tile into the store ("decode").
    Sampler state is saved periodically and on cancellation; ``resume=True`` continues an
    interrupted store with the same settings and gives the same slide as an uninterrupted run.
    """
    settings = settings or GenerateSettings()
    config = image_model.config
    if config.kind != "image":
        raise CheckpointError(f"{image_model.source} is a {config.kind} model; generation needs an image model")
    if tuple(mask.shape) != tuple(size):
        raise MaskError(f"the mask covers {mask.shape[1]}x{mask.shape[0]} px but the slide is {size[1]}x{size[0]} px")
    validate_labels(mask.canvas, len(config.class_names), config.class_names)
    steps = settings.steps or config.sampling_steps
    eta = config.eta if settings.eta is None else settings.eta
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype)
    image_model.to(device)
    shape = latent_shape(size, image_model, codec)
    provenance = _provenance(image_model, codec, settings, steps, eta, mask_info or {})

    store, state, decoded_rows = _open_store(out, size, image_model, provenance, resume, overwrite)
    if state is None:
        report(progress, ProgressEvent("pyramid", 0, 1, "writing labels"))
        store.write_labels(mask, progress=progress, cancel=cancel)
        store.save_canvas(mask.canvas)

    sampler = RandomPatchSampler(
        image_model.unet,
        channels=codec.latent_channels,
        patch=config.latent_patch,
        steps=steps,
        omega=settings.omega,
        eta=eta,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=device,
        dtype=dtype,
        timesteps=config.timesteps,
    )
    if state is None:
        state = sampler.initial_state(shape)
        _save_state(store, state, decoded_rows=0, steps=steps)

    def checkpoint(s: SamplerState) -> None:
        _save_state(store, s, decoded_rows=0, steps=steps)

    started = time.perf_counter()
    if state.step < steps:
        labels = latent_labels(mask, shape, codec.scale_factor)
        state = sampler.run(
            state,
            labels,
            progress=progress,
            cancel=cancel,
            checkpoint=checkpoint,
            checkpoint_every_s=settings.checkpoint_every_s,
            preview=lambda x0: preview_rgb(x0, codec),
        )
    sampled = time.perf_counter() - started

    latent = state.latent

    def row_done(row: int) -> None:
        _save_state(store, state, decoded_rows=row + 1, steps=steps)

    decode_tiles(
        latent.to(device),
        codec.decode,
        scale=codec.scale_factor,
        image_shape=size,
        write=store.write_tile,
        tile=512,
        margin=codec.context,
        first_row=decoded_rows,
        on_row_done=row_done,
        progress=progress,
        cancel=cancel,
    )
    store.update_provenance(
        sampler_stats={
            "patches_per_step": sampler.stats.mean_patches_per_step,
            "ideal_patches_per_step": sampler.stats.ideal_patches_per_step,
            "network_evals": sampler.stats.network_evals,
            "batch_size": sampler.batch_size,
            "sampling_seconds": round(sampled, 3),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        }
    )
    store.mark_complete()
    return store


def _save_state(store: SlideStore, state: SamplerState, *, decoded_rows: int, steps: int) -> None:
    meta = {"step": state.step, "steps": steps, "decoded_rows": decoded_rows}
    arrays = {"latent": state.latent.numpy()}
    store.save_state(arrays, meta)


def _open_store(out, size, image_model, provenance, resume: bool, overwrite: bool):
    """Create the store, or reopen it for ``resume`` after checking the settings match."""
    out = Path(out)
    config = image_model.config
    if resume and out.exists():
        store = SlideStore.open(out, mode="r+")
        saved = store.provenance
        loaded = store.load_state()
        if loaded is None:
            raise StoreError(f"{out} has no sampler state to resume from; generate it again with --overwrite")
        differences = [
            f"{k}: store {saved.get(k)!r} vs now {provenance[k]!r}" for k in _RESUME_KEYS if saved.get(k) != provenance[k]
        ]
        if tuple(store.shape) != tuple(size):
            differences.append(f"size: store {store.shape[1]}x{store.shape[0]} vs now {size[1]}x{size[0]}")
        model_sha = (saved.get("image_model") or {}).get("sha256")
        if model_sha != image_model.sha256:
            differences.append("image model: a different model wrote this store")
        if differences:
            raise StoreError(f"cannot resume {out}: settings differ ({'; '.join(differences)}); use the original settings")
        arrays, meta = loaded
        state = SamplerState(torch.from_numpy(np.array(arrays["latent"])), int(meta["step"]))
        return store, state, int(meta.get("decoded_rows", 0))
    if resume:
        log.info("%s does not exist yet; starting a new slide", out)
    store = SlideStore.create(
        out,
        size,
        class_names=list(config.class_names),
        class_colors=[tuple(c) for c in config.class_colors],
        pixel_size_um=config.pixel_size_um,
        provenance=provenance,
        overwrite=overwrite,
    )
    return store, None, 0


def sample_layout(
    mask_model: DiffusionModel,
    codec: Codec,
    size: tuple[int, int],
    *,
    condition: int = 1,
    omega: float = 0.0,
    seed: int = 0,
    steps: int | None = None,
    device: str | None = "cpu",
    dtype: str = "float32",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Sample a tissue layout (uint8 label canvas at 1/``mask_downsample`` of ``size``)."""
    dev = resolve_device(device)
    mask_model.to(dev)
    return mask_sampler.sample_layout(
        mask_model, codec, size, condition=condition, omega=omega, seed=seed, steps=steps,
        device=dev, dtype=resolve_dtype(dtype), progress=progress, cancel=cancel,
    )  # fmt: skip


def settings_dict(settings: GenerateSettings) -> dict[str, Any]:
    return asdict(settings)


def mask_from_path(
    path: str | Path,
    size: tuple[int, int],
    class_names: list[str],
    *,
    tissue_label: int = 1,
    on_unknown: str = "error",
) -> tuple[MaskSource, dict[str, Any]]:
    """A mask source for a slide of ``size`` from a file, and a description for provenance.

    * ``.geojson``/``.json``: QuPath annotations, classes matched by name to ``class_names``
      (coordinates are level-0 pixels of the slide being generated);
    * a whole-slide image OpenSlide can open (``.svs``, ``.ndpi``, ``.mrxs``, tiled ``.tif``):
      its tissue layout, tissue = ``tissue_label``, background = 0, stretched to ``size``;
    * any other image (PNG/TIFF): a label image, one class index per pixel, at any resolution.
    """
    from .slide.masks import mask_from_file

    path = Path(path).expanduser()
    if not path.exists():
        raise MaskError(f"mask file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        from .slide.geojson import geojson_to_labels

        imported = geojson_to_labels(path, class_names=class_names, slide_shape=size, on_unknown=on_unknown)
        from .slide.masks import CanvasMask

        info = {"source": str(path), "type": "geojson", "painted": imported.painted, "unknown": imported.unknown}
        return CanvasMask(imported.canvas, size), info
    if suffix in (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide") or (
        suffix in (".tif", ".tiff") and _is_tiled_slide(path)
    ):
        from .slide.tissue import tissue_layout_source

        if not 0 < tissue_label < len(class_names):
            raise MaskError(f"tissue label {tissue_label} is not one of the model's classes 1..{len(class_names) - 1}")
        source = tissue_layout_source(path, tissue_label=tissue_label, slide_shape=size)
        return source, {"source": str(path), "type": "real-slide tissue layout", "tissue_label": tissue_label}
    return mask_from_file(path, size), {"source": str(path), "type": "label image"}


def _is_tiled_slide(path: Path) -> bool:
    try:
        from .slide.openslide_reader import is_real_slide

        return is_real_slide(path)
    except Exception:  # noqa: BLE001 - anything that is not a slide is a label image
        return False
