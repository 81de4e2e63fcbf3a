"""A multi-magnification cascade (URCDM): the slide sampled coarse to fine, level by level.

``GenerateRequest(cascade=[LOW, ..., HIGH])`` names the models from the lowest magnification
to the highest; every model but the lowest is a cascade stage (``config.cascade``) whose
``parent_scale`` says how many times more magnified it is than the one below. The slide
``size`` is the highest level's; level ``k`` is ``S_k`` times smaller (``S_k`` the product of
the scales above it), ``ceil(size / S_k)``.

The lowest level is sampled for the whole slide with the parallel random-patch sampler, as a
single-scale slide is (same seed: it *is* that slide at the lower magnification). Each higher
level is sampled by the same sampler, every patch conditioned on the level below under it
(:class:`~napari_diffinfinite.sampling.canvas.ConditionCanvas`, gathered at the patch's
positions; only the lower level is held, at its own resolution). A finished lower level is
decoded into the slide store's pyramid level ``log2(S_k)`` at once, so a viewer shows the
coarse slide first; the highest level is decoded into level 0, which rewrites every level as
its downsample.

Resume: the sampler state records the level (``cascade_level``), its step and the lower level
it is conditioned on (``parent``: the decoded uint8 image, or the final latent), so an
interrupted cascade continues at the level and step it reached and gives the same slide.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, SettingsError, StoreError
from ..model.cascade import condition_index
from ..model.codec import Codec
from ..model.pretrained import DiffusionModel
from ..progress import CancelToken, ProgressCallback, ProgressEvent, report
from ..sampling.canvas import ConditionCanvas
from ..sampling.decode import decode_tiles
from ..sampling.preview import preview_rgb
from ..sampling.sampler import RandomPatchSampler, SamplerState
from ..slide.masks import latent_labels, validate_labels
from ..slide.store import SlideStore
from ..slide.tissue import optical_density
from .geometry import latent_shape
from .job import _Job, _layout, _provenance, _resolved_settings, resume_slide
from .models import LoadedModels, dtype_name, load_models, resolve_device, resolve_dtype
from .request import DEFAULT_SEED, GenerateRequest, resolve_omega, validate, validate_for_model

log = logging.getLogger(__name__)

MAX_CASCADE_LEVELS = 4
GLASS_OD = 0.04
"""A lower-level pixel is glass when its mean optical density is below this (RGB about 233 and
brighter); ``skip_glass`` copies the level below onto latent pixels that lie wholly on glass."""


@dataclass
class CascadeLevel:
    """One level of a cascade: its model and codec, and where it sits in the slide."""

    models: LoadedModels
    downscale: int  # slide (highest-level) pixels per pixel of this level
    size: tuple[int, int]  # (H, W) of this level
    seed: int

    @property
    def model(self) -> DiffusionModel:
        return self.models.image

    @property
    def codec(self) -> Codec:
        return self.models.codec

    @property
    def store_level(self) -> int:
        """The slide pyramid level that holds this magnification."""
        return int(math.log2(self.downscale))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return latent_shape(self.size, self.model.config, self.codec.scale_factor)


def level_seed(seed: int, level: int) -> int:
    """The sampler seed of cascade level ``level`` (0 = lowest: the slide's seed itself)."""
    if level == 0:
        return seed
    state = np.random.SeedSequence([seed, 0xCA5CADE, level]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def check_cascade_length(count: int) -> None:
    """Refuse a cascade of fewer than 2 or more than ``MAX_CASCADE_LEVELS`` models (before any is loaded)."""
    if not 2 <= count <= MAX_CASCADE_LEVELS:
        raise SettingsError(f"a cascade has 2 to {MAX_CASCADE_LEVELS} models (lowest magnification first), got {count}")


def cascade_levels(models: Sequence[LoadedModels], size: tuple[int, int], seed: int) -> list[CascadeLevel]:
    """Check that ``models`` (lowest magnification first) form a cascade; their levels for ``size``.

    Refused: fewer than two models, a lowest model that is a cascade stage, a higher one that
    is not, classes that differ, and a latent-conditioned stage whose codec is not the one
    below (its condition is that level's latent).
    """
    check_cascade_length(len(models))
    names = [m.image.config.class_names for m in models]
    first = models[0].image
    if first.config.cascade is not None:
        raise SettingsError(
            f"{first.source} is a cascade stage (conditioned on a lower level) but comes first; the first model of a "
            "cascade samples the lowest magnification alone: give the models lowest magnification first"
        )
    scales = []
    for below, above in zip(models[:-1], models[1:]):
        config = above.image.config
        if config.cascade is None:
            raise SettingsError(
                f"{above.image.source} is not a cascade stage (its config has no 'cascade'); every model after the "
                "first must be trained with --cascade-from"
            )
        if config.cascade["condition"] == "latent" and (
            below.codec.name != above.codec.name
            or below.codec.scale_factor != above.codec.scale_factor
            or below.codec.latent_channels != above.codec.latent_channels
        ):
            raise SettingsError(
                f"{above.image.source} is conditioned on the latent of the level below, but {below.image.source} "
                f"works in another latent space ({below.codec.name}); pair it with a model of the same codec"
            )
        scales.append(int(config.cascade["parent_scale"]))
    if any(n != names[0] for n in names):
        raise CheckpointError(
            "the models of a cascade must have the same classes: " + " | ".join(", ".join(n) for n in names)
        )
    levels = []
    for k, loaded in enumerate(models):
        downscale = math.prod(scales[k:])
        level_size = (-(-size[0] // downscale), -(-size[1] // downscale))
        levels.append(CascadeLevel(loaded, downscale, level_size, level_seed(seed, k)))
    return levels


MAX_CASCADE_FILE_BYTES = 1 << 16


def read_cascade_file(path: str | Path) -> list[str]:
    """The models of a cascade config file, lowest magnification first.

    The file is JSON: ``{"models": ["low/", "mid/", "high/"]}``; relative paths are taken
    from the file's folder, so a cascade folder can be moved as a whole.
    """
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_CASCADE_FILE_BYTES:
            raise SettingsError(f"{path} is too large for a cascade file (a few lines of JSON)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read the cascade file {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise SettingsError(f"{path} is not a cascade file (JSON): {str(exc)[:200]}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise SettingsError(
            f'{path} must hold {{"models": ["LOW_MODEL", ..., "HIGH_MODEL"]}} (paths, lowest magnification first)'
        )
    check_cascade_length(len(models))
    return [m if m == "default" else str((path.parent / m).expanduser()) for m in models]


def _load(request: GenerateRequest, settings, sample_layout: bool) -> list[LoadedModels]:
    """Load every model of the cascade once (a codec shared by levels is loaded once)."""
    check_cascade_length(len(request.cascade))  # a long list must not load its models first
    loaded: list[LoadedModels] = []
    codecs: dict[tuple, Codec] = {}
    last = len(request.cascade) - 1
    for k, spec in enumerate(request.cascade):
        wants_mask = k == last and sample_layout
        models = load_models(
            spec, vae=request.vae, mask_model=request.layout.mask_model if wants_mask else False,
            num_labels=request.layout.num_labels, device=settings.device, dtype=settings.dtype,
        )  # fmt: skip
        c = models.image.config
        key = (c.codec, c.pixel_unshuffle, c.latent_scale)
        models.codec = codecs.setdefault(key, models.codec)
        loaded.append(models)
    return loaded


def run_cascade(
    request: GenerateRequest, *, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> SlideStore:
    """Generate (or resume) the cascade slide ``request`` describes (``request.cascade``).

    Everything is validated before anything is written: the request (as for one model), the
    chain of models (:func:`cascade_levels`), and every level against its model (steps,
    classes, memory, disk).
    """
    if request.models is not None or request.image_model is not None:
        raise SettingsError("a cascade names its models in 'cascade' (lowest magnification first); give no image model")
    validate(request)
    out = request.path
    resuming = request.resume and out.exists()
    if request.layout.samples and request.layout.mask_model is None and not resuming:
        raise SettingsError(
            "give the cascade a layout: --mask FILE, --label N, or --mask-model PATH ('default': the demo mask model)"
        )
    point = resume_slide(out) if resuming else None
    try:
        return _generate(request, point, progress, cancel)
    except BaseException:
        if point is not None:
            point.store.close()
        raise


def _generate(request: GenerateRequest, point, progress, cancel) -> SlideStore:
    out = request.path
    settings = _resolved_settings(request, point)
    if point is not None and point.complete:
        point.store.close()
        return point.store
    if point is not None and not point.provenance.get("cascade"):
        raise StoreError(
            f"cannot resume {out} as a cascade: it was generated by one model; resume it without --cascade"
        )
    size = tuple(request.size) if point is None else point.size
    seed = DEFAULT_SEED if settings.seed is None else int(settings.seed)
    loaded = _load(request, settings, sample_layout=point is None and request.layout.samples)
    levels = cascade_levels(loaded, size, seed)
    top = levels[-1]
    for level in levels:
        validate_for_model(request, level.models, level.size, existing_store=point is not None)
    steps = settings.steps if settings.steps is not None else top.model.config.sampling_steps
    eta = top.model.config.eta if settings.eta is None else settings.eta
    # Guidance per level: --omega for all, else each model's own default (models tuned apart, e.g. a
    # v-predicting demo model that needs none under a stage tuned with some); on resume, the store's.
    before = point.provenance.get("cascade") or [] if point is not None else []
    if point is not None and len(before) == len(levels) and all("omega" in d for d in before):
        omegas = [float(d["omega"]) for d in before]
    else:  # a new cascade, or one written before guidance was per level (then: one omega for all)
        omegas = [resolve_omega(settings.omega, (top if point is not None else lv).model.config) for lv in levels]
    omega = omegas[-1]
    device, dtype = resolve_device(settings.device), resolve_dtype(settings.dtype)
    described = [
        {"source": lv.model.source, "sha256": lv.model.sha256, "downscale": lv.downscale, "seed": lv.seed, "omega": w}
        for lv, w in zip(levels, omegas)
    ]
    skip_glass = bool(request.skip_glass) if point is None else bool(point.provenance.get("skip_glass"))
    if point is not None and request.skip_glass is not None and bool(request.skip_glass) != skip_glass:
        raise StoreError(f"cannot resume {out} with skip_glass={request.skip_glass}: the store was started with "
                         f"{skip_glass}; leave the option out on resume")  # fmt: skip
    if skip_glass:
        for level in levels[1:]:
            c = level.model.config
            if c.cascade["condition"] != "image" or c.codec != "identity":
                raise SettingsError(
                    f"glass skipping copies the level below into the latent, which needs a pixel-space stage "
                    f"conditioned on the image; {level.model.source} is a {c.codec} stage conditioned on the "
                    f"{c.cascade['condition']}: leave out --skip-glass"
                )
    if point is not None:
        if [d.get("sha256") for d in before] != [d["sha256"] for d in described]:
            raise StoreError(f"cannot resume {out}: other models wrote this cascade; give the original models in order")

    mask, mask_info = _layout(request, point, top.models, size, seed, settings, progress, cancel)
    names = list(top.model.config.class_names)
    validate_labels(mask.canvas, len(names), names)

    job = _CascadeJob(None, steps, settings.checkpoint_every_s, compile=settings.compile)
    job.skip_glass = skip_glass
    if point is None:
        provenance = _provenance(top.model, top.codec, steps, omega, eta, seed, device, dtype, mask_info)
        provenance["sampler"] = "multi-magnification cascade of parallel random-patch DDIM"
        provenance["cascade"] = described
        provenance["skip_glass"] = skip_glass
        store = SlideStore.create(
            out, size, class_names=names, class_colors=[tuple(c) for c in top.model.config.class_colors],
            pixel_size_um=top.model.config.pixel_size_um, provenance=provenance, overwrite=request.overwrite,
        )  # fmt: skip
        job.store = store
        try:
            store.save_canvas(np.asarray(mask.canvas, dtype=np.uint8))
            job.save(None, 0, decoded_rows=0, labels_written=False)
        except BaseException:
            store.close()
            raise
        start = _Start(0, None, 0, 0, False, None)
    else:
        store = job.store = point.store
        arrays, meta = store.load_state() or ({}, {})
        level = int(meta.get("cascade_level", 0))
        if not 0 <= level < len(levels) or (level > 0 and "parent" not in arrays):
            raise StoreError(f"the cascade state of {out} is damaged; generate it again with --overwrite")
        start = _Start(level, point.latent, point.step, point.decoded_rows, point.labels_written, arrays.get("parent"))
    try:
        return job.run_levels(levels, mask, size, start, omegas=omegas, eta=eta, batch_size=settings.batch_size,
                              device=device, dtype=dtype, keep_state=request.keep_state,
                              progress=progress, cancel=cancel)  # fmt: skip
    finally:
        store.close()


@dataclass
class _Start:
    level: int
    latent: np.ndarray | None
    step: int
    decoded_rows: int
    labels_written: bool
    parent: np.ndarray | None


class _CascadeJob(_Job):
    """The writing half of a cascade: labels, then every level sampled and decoded in turn.

    Its saved state adds the level (``cascade_level``) and the lower level it is conditioned
    on (``parent``) to a single-scale job's.
    """

    level = 0
    parent: np.ndarray | None = None
    skip_glass = False

    def save(self, latent: torch.Tensor | None, step: int, *, decoded_rows: int, labels_written: bool) -> None:
        meta = {"step": step, "steps": self.steps, "decoded_rows": decoded_rows, "labels_written": labels_written,
                "cascade_level": self.level}  # fmt: skip
        arrays = {} if latent is None or step == 0 else {"latent": latent.cpu().numpy()}
        if self.parent is not None:
            arrays["parent"] = self.parent
        self.store.save_state(arrays, meta)

    def run_levels(self, levels: list[CascadeLevel], mask, size: tuple[int, int], start: _Start, *, omegas: list[float],
                   eta: float, batch_size: int | None, device: torch.device, dtype: torch.dtype, keep_state: bool,
                   progress: ProgressCallback | None, cancel: CancelToken | None) -> SlideStore:  # fmt: skip
        store = self.store
        self.level, self.parent = start.level, start.parent
        if not start.labels_written:
            report(progress, ProgressEvent("pyramid", 0, 1, "writing labels"))
            store.write_labels(mask, progress=progress, cancel=cancel)
            self.save(None, 0, decoded_rows=0, labels_written=True)
        stats = []
        for k in range(start.level, len(levels)):
            level = levels[k]
            config, codec = level.model.config, level.codec
            tell = _level_progress(progress, k, len(levels), level.downscale)
            sampler = RandomPatchSampler(
                level.model.unet, channels=codec.latent_channels, patch=config.latent_patch, steps=self.steps,
                omega=omegas[k], eta=eta, seed=level.seed, batch_size=batch_size, device=device, dtype=dtype,
                timesteps=config.timesteps, compile=self.compile, prediction=config.objective,
            )  # fmt: skip
            resumed = k == start.level and start.latent is not None
            shape = level.latent_shape
            if resumed and tuple(start.latent.shape) != (codec.latent_channels, *shape):
                raise StoreError(
                    f"the saved latent of level {k + 1} is {tuple(start.latent.shape)}, not "
                    f"{(codec.latent_channels, *shape)}: the state does not belong to these models; start again"
                )
            state = (
                SamplerState(torch.from_numpy(np.array(start.latent)), start.step)
                if resumed
                else sampler.initial_state(shape)
            )
            condition = None if k == 0 else _condition(levels[k - 1], level, self.parent, device)
            known = _glass(levels[k - 1], level, self.parent) if k > 0 and self.skip_glass else None

            def checkpoint(s: SamplerState) -> None:
                self.save(s.latent, s.step, decoded_rows=0, labels_written=True)

            if state.step < self.steps:
                labels = latent_labels(mask, shape, codec.scale_factor * level.downscale)
                state = sampler.run(
                    state, labels, progress=tell, cancel=cancel, checkpoint=checkpoint,
                    checkpoint_every_s=self.every_s, preview=lambda x0, c=codec: preview_rgb(x0, c),
                    condition=condition, known=known,
                )  # fmt: skip
            stats.append({"level": k, "downscale": level.downscale, "patches_per_step": sampler.stats.mean_patches_per_step,
                          "network_evals": sampler.stats.network_evals,
                          "glass_patches_skipped": sampler.stats.skipped_patches})  # fmt: skip
            if k == len(levels) - 1:
                first_row = start.decoded_rows if k == start.level else 0
                self._decode(state, codec, size, device, first_row, tell, cancel)
                break
            image = self._decode_lower(level, state, store, device, tell, cancel)
            above = levels[k + 1].model.config.cascade
            self.parent = image if above["condition"] == "image" else state.latent.numpy()
            self.level = k + 1
            self.save(None, 0, decoded_rows=0, labels_written=True)
        store.update_provenance(cascade_stats=stats, cascade_device={"device": str(device), "dtype": dtype_name(dtype)})
        store.mark_complete(keep_state=keep_state)
        return store

    @staticmethod
    def _decode_lower(level: CascadeLevel, state: SamplerState, store: SlideStore, device: torch.device,
                      progress: ProgressCallback | None, cancel: CancelToken | None) -> np.ndarray:  # fmt: skip
        """Decode a lower level into memory (the next level's condition) and into its pyramid level."""
        height, width = level.size
        image = np.zeros((3, height, width), np.uint8)
        shown = level.store_level < store.num_levels

        def write(y0: int, x0: int, rgb: np.ndarray) -> None:
            image[:, y0 : y0 + rgb.shape[1], x0 : x0 + rgb.shape[2]] = rgb
            if shown:
                store.write_level_tile(level.store_level, y0, x0, rgb)

        latent = state.latent.to(device)
        decode_tiles(
            latent, level.codec.tile_decoder(latent), scale=level.codec.scale_factor, image_shape=level.size,
            write=write, tile=store.tile, margin=level.codec.context, progress=progress, cancel=cancel,
        )  # fmt: skip
        return image


def _condition(below: CascadeLevel, level: CascadeLevel, parent: np.ndarray, device: torch.device) -> ConditionCanvas:
    """The level below as ``level``'s condition: its uint8 image in [-1, 1], or its latent."""
    cascade = level.model.config.cascade
    scale = int(cascade["parent_scale"])
    if cascade["condition"] == "image":
        if parent.shape != (3, *below.size):
            raise StoreError(f"the saved lower level is {parent.shape}, expected {(3, *below.size)}; start again")
        source = torch.from_numpy(np.ascontiguousarray(parent)).float().div_(255).mul_(2).sub_(1)
        return ConditionCanvas(source, scale=scale, sub=level.codec.scale_factor, device=device)
    return ConditionCanvas(torch.from_numpy(np.ascontiguousarray(parent)), scale=scale, sub=1, device=device)


def _glass(below: CascadeLevel, level: CascadeLevel, parent: np.ndarray) -> np.ndarray:
    """(h, w) bool: latent pixels of ``level`` whose every pixel lies on glass of the level below."""
    glass = optical_density(np.moveaxis(parent, 0, -1)) < GLASS_OD
    h, w = level.latent_shape
    index = condition_index(
        torch.arange(h)[None], torch.arange(w)[None], sub=level.codec.scale_factor,
        scale=int(level.model.config.cascade["parent_scale"]), source_shape=glass.shape,
    )  # fmt: skip
    return glass.reshape(-1)[index.numpy()].all(axis=0)[0]


def _level_progress(progress: ProgressCallback | None, k: int, n: int, downscale: int) -> ProgressCallback | None:
    """Progress events of level ``k`` with the level named in their message."""
    if progress is None:
        return None
    prefix = f"level {k + 1}/{n} (1/{downscale} magnification)" if downscale > 1 else f"level {n}/{n} (full)"

    def tell(event: ProgressEvent) -> None:
        report(progress, replace(event, message=f"{prefix}: {event.message}" if event.message else prefix))

    return tell
