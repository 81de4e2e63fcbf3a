"""The whole generation job as one call: a request in, a finished slide store out.

:func:`run_generate` validates the request, loads the models once, resumes or creates the
store (opened once), makes the layout, samples the latent and decodes it into the store,
with progress and cancellation throughout. The sampler state is saved every
``checkpoint_every_s`` seconds while sampling and decoding and whenever the job is
cancelled, so :func:`run_generate` with ``resume=True`` continues where it stopped and gives
the same slide as an uninterrupted run. The CLI, the widgets and ``generate-many`` all call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..diffusers_backend.model import DiffusersModel
from ..errors import MaskError, SettingsError, StoreError
from ..model.codec import Codec
from ..model.pretrained import DiffusionModel
from ..progress import CancelToken, ProgressCallback, ProgressEvent, report
from ..sampling.decode import decode_tiles
from ..sampling.preview import preview_rgb
from ..sampling.sampler import RandomPatchSampler, SamplerState
from ..slide.masks import CanvasMask, MaskSource, latent_labels, validate_labels
from ..slide.store import SlideStore
from .geometry import format_size, latent_shape
from .layout import LayoutSource, build_layout, check_resumed_sampling
from .models import LoadedModels, dtype_name, load_mask_model, load_models, resolve_device, resolve_dtype
from .request import DEFAULT_DTYPE, DEFAULT_SEED, GenerateRequest, GenerateSettings, resolve_omega, validate
from .request import validate_for_model as _validate_for_model

log = logging.getLogger(__name__)

#: Settings that must match for a resumed run to continue the same slide.
_RESUME_KEYS = ("seed", "steps", "omega", "eta", "patch_size")


@dataclass
class ResumePoint:
    """An interrupted (or finished) slide store, opened once for writing, with what it records:
    its size, layout canvas, settings, and the sampler state to continue from."""

    store: SlideStore
    size: tuple[int, int]
    provenance: dict[str, Any]
    canvas: np.ndarray | None
    latent: np.ndarray | None  # None: still at step 0 (the initial noise is keyed by the seed)
    step: int
    decoded_rows: int
    labels_written: bool

    @property
    def complete(self) -> bool:
        return bool(self.provenance.get("complete"))

    def settings(self) -> GenerateSettings:
        """The sampling settings the store was started with."""
        p = self.provenance
        return GenerateSettings(steps=p.get("steps"), omega=p.get("omega"), eta=p.get("eta"), seed=p.get("seed"),
                                device=p.get("device"), dtype=p.get("dtype"))  # fmt: skip


def resume_slide(path: str | Path) -> ResumePoint:
    """Open the store at ``path`` for writing and read what a resumed run needs.

    Raises StoreError if it is not a store this tool wrote or its state is missing/damaged.
    """
    store = SlideStore.open(path, mode="r+")
    try:
        return _read_resume_point(store)
    except BaseException:
        store.close()
        raise


def _read_resume_point(store: SlideStore) -> ResumePoint:
    path, provenance, canvas = store.path, store.provenance, store.load_canvas()
    if provenance.get("complete"):
        return ResumePoint(store, tuple(store.shape), provenance, canvas, None, -1, -1, True)
    loaded = store.load_state()
    if loaded is None or canvas is None:
        raise StoreError(f"{path} has no sampler state to resume from; generate it again with --overwrite")
    arrays, meta = loaded
    latent = arrays.get("latent")
    step = int(meta.get("step", 0))
    if latent is None and step:
        raise StoreError(f"the resume state of {path} has no latent at step {step}; generate it again with --overwrite")
    return ResumePoint(
        store, tuple(store.shape), provenance, canvas, latent, step,
        int(meta.get("decoded_rows", 0)), bool(meta.get("labels_written", True)),
    )  # fmt: skip


def _resolved_settings(request: GenerateRequest, point: ResumePoint | None) -> GenerateSettings:
    """The request's settings, with unset values taken from the store on resume; differences refused."""
    s = request.settings
    if point is None:
        return replace(s, dtype=s.dtype or DEFAULT_DTYPE)
    saved = point.settings()
    differences = []
    for key in ("steps", "omega", "eta", "seed"):
        now, before = getattr(s, key), getattr(saved, key)
        if now is not None and before is not None and now != before:
            differences.append(f"{key}: store {before!r} vs now {now!r}")
    if request.size is not None and tuple(request.size) != point.size:
        differences.append(f"size: store {format_size(point.size)} vs now {format_size(request.size)}")
    if differences:
        raise StoreError(
            f"cannot resume {request.path}: settings differ ({'; '.join(differences)}); "
            "leave them out to use the store's, or start a new slide"
        )
    dtype = s.dtype or saved.dtype or DEFAULT_DTYPE
    if saved.dtype and dtype_name(dtype) != saved.dtype and not request.allow_dtype_change:
        raise StoreError(
            f"cannot resume {request.path} in {dtype_name(dtype)}: it was sampled in {saved.dtype}, and a change "
            "of precision changes the slide; resume without --dtype, or pass --allow-dtype-change"
        )
    device = s.device or saved.device
    if saved.device and resolve_device(device).type != saved.device and not request.allow_device_change:
        raise StoreError(
            f"cannot resume {request.path} on {resolve_device(device).type}: it was sampled on {saved.device}, "
            "and another device gives a (slightly) different slide; resume there, or pass --allow-device-change"
        )
    return GenerateSettings(
        steps=s.steps if s.steps is not None else saved.steps,
        omega=s.omega if s.omega is not None else saved.omega,
        eta=s.eta if s.eta is not None else saved.eta,
        seed=s.seed if s.seed is not None else saved.seed,
        batch_size=s.batch_size, device=device, dtype=dtype, checkpoint_every_s=s.checkpoint_every_s,
        compile=s.compile,
    )  # fmt: skip


def _provenance(model: DiffusionModel, codec: Codec, steps: int, omega: float, eta: float, seed: int,
                device: torch.device, dtype: torch.dtype, mask_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    c = model.config
    extra = {}
    if isinstance(model, DiffusersModel):
        extra = {"diffusers": model.provenance(omega, steps, eta)}
    return {
        "software": "napari-diffinfinite",
        "version": __version__,
        "image_model": {"source": model.source, "sha256": model.sha256},
        **extra,
        "codec": codec.name if c.pixel_unshuffle == 1 else f"{codec.name}/unshuffle{c.pixel_unshuffle}",
        "seed": seed,
        "steps": steps,
        "omega": omega,
        "cond_scale": omega + 1.0,
        "eta": eta,
        "patch_size": c.patch_size,
        "sampler": "parallel random-patch " + (extra["diffusers"]["scheduler_class"] if extra else "DDIM"),
        "device": device.type,
        "dtype": dtype_name(dtype),
        "mask": mask_info,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _load(request: GenerateRequest, settings: GenerateSettings, sample_layout: bool) -> LoadedModels:
    if request.models is not None:
        models = request.models
        device, dtype = resolve_device(settings.device), resolve_dtype(settings.dtype)
        models.image.to(device, dtype)
        if request.diffusers is not None:
            if not isinstance(models.image, DiffusersModel):
                raise SettingsError("diffusers options were given but the loaded image model is a DiffInfinite model")
            models.image.condition(request.diffusers)  # this slide's prompts, encoded once
        if sample_layout and models.mask is None:
            raise SettingsError("the layout is to be sampled but the loaded models hold no mask model")
        return models
    if request.diffusers is not None:
        from ..diffusers_backend.model import load_diffusers

        model, codec = load_diffusers(
            request.diffusers, device=resolve_device(settings.device), dtype=resolve_dtype(settings.dtype)
        )
        return LoadedModels(image=model, codec=codec)
    layout = request.layout
    return load_models(
        request.image_model, vae=request.vae, mask_model=layout.mask_model if sample_layout else False,
        num_labels=layout.num_labels, device=settings.device, dtype=settings.dtype,
    )  # fmt: skip


def _layout(request: GenerateRequest, point: ResumePoint | None, models: LoadedModels, size: tuple[int, int],
            seed: int, settings: GenerateSettings, progress, cancel) -> tuple[MaskSource, dict[str, Any]]:  # fmt: skip
    names = list(models.image.config.class_names)
    if point is not None and request.layout.samples:  # the store's layout; given options must agree with it
        saved = dict(point.provenance.get("mask") or {})
        spec = request.layout.mask_model
        if spec is None:
            sha = None
        elif isinstance(spec, DiffusionModel):  # a loaded model: its hash, without moving it to another device
            sha = spec.sha256
        else:
            sha = load_mask_model(spec, num_labels=request.layout.num_labels).sha256
        check_resumed_sampling(request.layout, saved, sha, request.path)
        return CanvasMask(point.canvas, size), saved
    mask, info = build_layout(
        request.layout, size, names, mask_model=models.mask, mask_codec=models.mask_codec, seed=seed,
        device=settings.device, dtype=settings.dtype, progress=progress, cancel=cancel,
    )  # fmt: skip
    if point is not None and not np.array_equal(np.asarray(mask.canvas), point.canvas):
        raise StoreError(
            f"cannot resume {request.path} with another layout: the store was started from "
            f"{(point.provenance.get('mask') or {}).get('source') or 'a different layout'}; resume without a layout "
            "option (the store's own is used), or start a new slide with --overwrite"
        )
    return mask, info


#: What a resumed diffusers slide must be conditioned on as before.
_DIFFUSERS_RESUME_KEYS = ("prompt", "negative_prompt", "class_prompts", "scheduler", "conditioning", "controlnet_scale")


def _check_resumed_prompts(out: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a diffusers slide with other prompts, scheduler or ControlNet settings."""
    differences = [
        f"{key}: store {before.get(key)!r} vs now {now.get(key)!r}"
        for key in _DIFFUSERS_RESUME_KEYS
        if before.get(key) != now.get(key)
    ]
    if differences:
        raise StoreError(
            f"cannot resume {out}: it was started with other conditioning ({'; '.join(differences)}); give the "
            "same prompts and options as before (diffinfinite info shows them), or start a new slide"
        )


def run_generate(
    request: GenerateRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlideStore:
    """Generate (or resume) the slide ``request`` describes and return its finished store.

    Everything is validated before anything is written or allocated (:func:`validate`, then
    :func:`validate_for_model` once the model is loaded). Stages reported through
    ``progress``: "mask" (a sampled layout), "pyramid" (labels), "sample" (with a preview),
    "decode". ``cancel`` stops the job within one batch; the state is saved first, so the
    store can be resumed. Raises DiffInfiniteError subclasses with the fix for every
    user-caused problem, and :class:`~napari_diffinfinite.progress.Cancelled` when cancelled.
    """
    if request.cascade is not None:  # a multi-magnification cascade: see engine/cascade.py
        from .cascade import run_cascade

        return run_cascade(request, progress=progress, cancel=cancel)
    validate(request)
    out = request.path
    point = resume_slide(out) if request.resume and out.exists() else None
    if point is not None and point.provenance.get("cascade") and not point.complete:
        point.store.close()
        raise StoreError(f"{out} is a cascade slide; resume it with the same --cascade models")
    if request.resume and point is None:
        log.info("%s does not exist yet; starting a new slide", out)
    try:
        return _generate(request, point, progress, cancel)
    except BaseException:
        if point is not None:
            point.store.close()  # resumable again, by this process or another
        raise


def _generate(request: GenerateRequest, point: ResumePoint | None, progress: ProgressCallback | None,
              cancel: CancelToken | None) -> SlideStore:  # fmt: skip
    out = request.path
    settings = _resolved_settings(request, point)
    if point is not None and point.complete:
        if request.layout.chosen():
            log.info("%s is complete; the layout options are not used", out)
        point.store.close()
        return point.store
    size = tuple(request.size) if point is None else point.size
    models = _load(request, settings, sample_layout=point is None and request.layout.samples)
    _validate_for_model(request, models, size, existing_store=point is not None)
    config = models.image.config
    if getattr(config, "cascade", None) is not None:  # a diffusers pipeline has no cascade
        raise SettingsError(
            f"{models.image.source} is a cascade stage: it refines a lower magnification; generate with "
            "--cascade LOW_MODEL ... THIS_MODEL (see docs/cascade.md)"
        )
    steps = settings.steps if settings.steps is not None else config.sampling_steps
    eta = config.eta if settings.eta is None else settings.eta
    omega = resolve_omega(settings.omega, config)
    seed = DEFAULT_SEED if settings.seed is None else int(settings.seed)
    device, dtype = resolve_device(settings.device), resolve_dtype(settings.dtype)
    if point is not None:
        model_sha = (point.provenance.get("image_model") or {}).get("sha256")
        if model_sha != models.image.sha256:
            what = "pipeline, ControlNet or LoRA" if isinstance(models.image, DiffusersModel) else "image model"
            raise StoreError(f"cannot resume {out}: a different {what} wrote this store; use the original one")
        if isinstance(models.image, DiffusersModel):
            _check_resumed_prompts(
                out, point.provenance.get("diffusers") or {}, models.image.provenance(omega, steps, eta)
            )
        if point.provenance.get("patch_size") not in (None, config.patch_size):
            raise StoreError(
                f"cannot resume {out}: the store was sampled with {point.provenance['patch_size']} px patches"
            )

    mask, mask_info = _layout(request, point, models, size, seed, settings, progress, cancel)
    if tuple(mask.shape) != tuple(size):
        raise MaskError(f"the mask covers {mask.shape[1]}x{mask.shape[0]} px but the slide is {format_size(size)} px")
    validate_labels(mask.canvas, len(config.class_names), list(config.class_names))

    if point is None:
        provenance = _provenance(models.image, models.codec, steps, omega, eta, seed, device, dtype, mask_info)
        store = SlideStore.create(
            out, size, class_names=list(config.class_names), class_colors=[tuple(c) for c in config.class_colors],
            pixel_size_um=config.pixel_size_um, provenance=provenance, overwrite=request.overwrite,
        )  # fmt: skip
        try:
            store.save_canvas(np.asarray(mask.canvas, dtype=np.uint8))
            _Job(store, steps, settings.checkpoint_every_s).save(None, 0, decoded_rows=0, labels_written=False)
        except BaseException:
            store.close()
            raise
        latent, step, decoded_rows, labels_written = None, 0, 0, False
    else:
        store = point.store
        latent, step, decoded_rows, labels_written = point.latent, point.step, point.decoded_rows, point.labels_written
    job = _Job(store, steps, settings.checkpoint_every_s, compile=settings.compile)
    try:
        return job.run(models, mask, size, omega=omega, eta=eta, seed=seed, batch_size=settings.batch_size,
                       device=device, dtype=dtype, latent=latent, step=step, decoded_rows=decoded_rows,
                       labels_written=labels_written, keep_state=request.keep_state,
                       progress=progress, cancel=cancel)  # fmt: skip
    finally:
        store.close()  # releases the writer lock; after mark_complete this does nothing


class _Job:
    """The writing half of a generation: labels, sampling and decoding into one open store."""

    def __init__(self, store: SlideStore, steps: int, every_s: float, *, compile: bool = False) -> None:
        self.store, self.steps, self.every_s, self.compile = store, steps, every_s, compile

    def save(self, latent: torch.Tensor | None, step: int, *, decoded_rows: int, labels_written: bool) -> None:
        """Save the sampler state; at step 0 only the meta (the initial noise is keyed by the seed)."""
        meta = {"step": step, "steps": self.steps, "decoded_rows": decoded_rows, "labels_written": labels_written}
        arrays = {} if latent is None or step == 0 else {"latent": latent.cpu().numpy()}
        self.store.save_state(arrays, meta)

    def run(self, models: LoadedModels, mask: MaskSource, size: tuple[int, int], *, omega: float, eta: float,
            seed: int, batch_size: int | None, device: torch.device, dtype: torch.dtype, latent: np.ndarray | None,
            step: int, decoded_rows: int, labels_written: bool, keep_state: bool,
            progress: ProgressCallback | None, cancel: CancelToken | None) -> SlideStore:  # fmt: skip
        store, config, codec = self.store, models.image.config, models.codec
        if not labels_written:
            report(progress, ProgressEvent("pyramid", 0, 1, "writing labels"))
            store.write_labels(mask, progress=progress, cancel=cancel)
            self.save(None if latent is None else torch.from_numpy(np.asarray(latent)), step, decoded_rows=decoded_rows,
                      labels_written=True)  # fmt: skip
        backend = (
            models.image.sampler_options(steps=self.steps, eta=eta, channels=codec.latent_channels)
            if isinstance(models.image, DiffusersModel)
            else {"prediction": config.objective}
        )
        sampler = RandomPatchSampler(
            models.image.unet, channels=codec.latent_channels, patch=config.latent_patch, steps=self.steps,
            omega=omega, eta=eta, seed=seed, batch_size=batch_size, device=device, dtype=dtype,
            timesteps=config.timesteps, compile=self.compile, **backend,
        )  # fmt: skip
        shape = latent_shape(size, config, codec.scale_factor)
        state = (
            sampler.initial_state(shape) if latent is None else SamplerState(torch.from_numpy(np.array(latent)), step)
        )

        def checkpoint(s: SamplerState) -> None:
            self.save(s.latent, s.step, decoded_rows=0, labels_written=True)

        started = time.perf_counter()
        if state.step < self.steps:
            state = sampler.run(
                state, latent_labels(mask, shape, codec.scale_factor), progress=progress, cancel=cancel,
                checkpoint=checkpoint, checkpoint_every_s=self.every_s, preview=lambda x0: preview_rgb(x0, codec),
            )  # fmt: skip
        sampled = time.perf_counter() - started
        self._decode(state, codec, size, device, decoded_rows, progress, cancel)
        store.update_provenance(
            sampler_stats={
                "patches_per_step": sampler.stats.mean_patches_per_step,
                "ideal_patches_per_step": sampler.stats.ideal_patches_per_step,
                "network_evals": sampler.stats.network_evals,
                "batch_size": sampler.batch_size,
                "sampling_seconds": round(sampled, 3),
                "device": str(device),
                "dtype": dtype_name(dtype),
            }
        )
        store.mark_complete(keep_state=keep_state)
        return store

    def _decode(self, state: SamplerState, codec: Codec, size: tuple[int, int], device: torch.device,
                first_row: int, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:  # fmt: skip
        """Decode tile rows into the store; the row reached is saved at most once per interval,
        and always when decoding stops early (cancelled, interrupted, failed)."""
        rows_done = first_row
        last_save = time.monotonic()

        def row_done(row: int) -> None:
            nonlocal rows_done, last_save
            rows_done = row + 1
            if time.monotonic() - last_save >= self.every_s:
                self.save(state.latent, state.step, decoded_rows=rows_done, labels_written=True)
                last_save = time.monotonic()

        try:
            latent = state.latent.to(device)
            # Tiles decoded as the whole latent would be (GroupNorm statistics, attention context).
            decode_tiles(
                latent, codec.tile_decoder(latent), scale=codec.scale_factor, image_shape=size,
                write=self.store.write_tile, tile=512, margin=codec.context, first_row=first_row,
                on_row_done=row_done, progress=progress, cancel=cancel,
            )  # fmt: skip
        except BaseException:
            if rows_done > first_row:
                self.save(state.latent, state.step, decoded_rows=rows_done, labels_written=True)
            raise


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
    keep_state: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SlideStore:
    """Generate a slide of ``size`` (H, W) from loaded models and a mask source.

    The former entry point, kept for callers that load models and build masks themselves; it
    is :func:`run_generate` with ``models`` and ``layout.source`` filled in.
    """
    request = GenerateRequest(
        out=out, size=tuple(size), models=LoadedModels(image=image_model, codec=codec),
        layout=LayoutSource(source=mask, info=mask_info), settings=settings or GenerateSettings(),
        resume=resume, overwrite=overwrite, keep_state=keep_state,
    )  # fmt: skip
    return run_generate(request, progress=progress, cancel=cancel)
