"""A generation job as data (:class:`GenerateRequest`) and its validation.

:func:`validate` checks everything that needs no model (and is called first by
:func:`~napari_diffinfinite.engine.run_generate`); :func:`validate_for_model` checks what
depends on the loaded model (steps against its schedule, the slide size against memory and
disk). Both run before anything is written or allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..demo import demo_model_dir
from ..diffusers_backend.model import DiffusersOptions
from ..errors import SettingsError, StoreError
from ..model.codec import Codec
from ..model.pretrained import DiffusionModel
from ..slide.ownership import check_replaceable_store
from .geometry import SlideCost, check_slide_size, parse_size
from .layout import LayoutSource, check_layout_choice
from .models import LoadedModels, ModelSpec, resolve_device, resolve_dtype

DEFAULT_OMEGA = 3.0
DEFAULT_SEED = 0
DEFAULT_DTYPE = "float32"


def resolve_omega(omega: float | None, config: object) -> float:
    """The guidance of a job: ``omega`` when given, else the model config's ``default_omega``
    (the demo model's, tuned for it; a diffusers pipeline's), else :data:`DEFAULT_OMEGA`."""
    if omega is not None:
        return float(omega)
    model_default = getattr(config, "default_omega", None)
    return float(model_default) if model_default is not None else DEFAULT_OMEGA


@dataclass
class GenerateSettings:
    """Sampling settings. ``None`` means: the store's value on resume, else the default
    (``steps``/``eta``: the model's; ``omega``: the model's ``default_omega``, else 3; ``seed`` 0; ``device`` auto; ``dtype``
    float32; ``batch_size``: from free memory). The state is saved every
    ``checkpoint_every_s`` seconds while sampling and decoding, and when interrupted.
    ``compile`` runs the network through ``torch.compile`` with static batch shapes (CUDA:
    CUDA graphs can apply; the first batches pay the compilation); it changes no result."""

    steps: int | None = None
    omega: float | None = None
    eta: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    checkpoint_every_s: float = 60.0
    compile: bool = False


@dataclass
class GenerateRequest:
    """One slide to generate: where, how large, with which models, layout and settings.

    ``size`` (H, W) may be ``None`` when resuming (the store's size is used). ``image_model``:
    a path, ``None`` for the embedded demo, or a loaded model; ``vae``: the SD-2 VAE folder
    (latent models) or a loaded codec; ``models`` skips loading altogether. ``resume``
    continues the store at ``out`` (a new one is started if it does not exist);
    ``overwrite`` replaces a store this tool wrote. ``keep_state`` keeps the sampler state in
    the finished store. ``allow_dtype_change``/``allow_device_change`` let a resumed run use
    another precision/device than the one recorded (the slide then differs from an
    uninterrupted one). ``diffusers``: generate with a diffusers pipeline (text prompts,
    optional ControlNet and LoRA) instead of a DiffInfinite model; the guidance scale is
    omega + 1, and with no layout given every pixel has label 0 (the slide's prompt).
    ``cascade``: the models of a multi-magnification cascade, lowest
    magnification first, instead of ``image_model`` (see :mod:`.cascade`); ``skip_glass``:
    the cascade's higher levels copy the level below where it is glass instead of sampling
    there (``None``: the store's choice on resume, else off).
    """

    out: str | Path
    size: tuple[int, int] | None = None
    image_model: ModelSpec = None
    vae: str | Path | Codec | None = None
    models: LoadedModels | None = None
    layout: LayoutSource = field(default_factory=LayoutSource)
    settings: GenerateSettings = field(default_factory=GenerateSettings)
    resume: bool = False
    overwrite: bool = False
    keep_state: bool = False
    allow_dtype_change: bool = False
    allow_device_change: bool = False
    diffusers: DiffusersOptions | None = None
    cascade: list[ModelSpec] | None = None
    skip_glass: bool | None = None

    @property
    def path(self) -> Path:
        return Path(self.out).expanduser()


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name} must be {bound}, got {value}")


def _image_is_demo(request: GenerateRequest) -> bool:
    if request.diffusers is not None:
        return False
    spec = request.models.image if request.models is not None else request.image_model
    if isinstance(spec, DiffusionModel):
        return spec.source.startswith("random-init demo") or spec.source == str(demo_model_dir("image"))
    return spec is None or str(spec) == "default"


def validate(request: GenerateRequest) -> None:
    """Refuse bad settings before any model is loaded or anything is written.

    Checks: ω finite; 0 <= η <= 1; steps >= 1; batch size >= 1; seed >= 0; device and dtype
    known and available; the size (when given) at least 1 x 1; exactly one layout source;
    mask files present; the output path usable (its folder exists, an existing store needs
    ``resume`` or ``overwrite``, not both).
    """
    if request.cascade is not None and request.diffusers is not None:
        raise SettingsError(
            "a cascade and a diffusers pipeline are two model families: give --cascade or --pipeline, not both"
        )
    s = request.settings
    if s.omega is not None and not (isinstance(s.omega, (int, float)) and math.isfinite(s.omega)):
        raise SettingsError(f"omega (guidance) must be a finite number, got {s.omega}")
    if s.eta is not None and not (isinstance(s.eta, (int, float)) and 0.0 <= s.eta <= 1.0):
        raise SettingsError(f"eta must be between 0 (deterministic DDIM) and 1 (DDPM-like), got {s.eta}")
    _check_int("steps", s.steps, 1)
    _check_int("batch size", s.batch_size, 1)
    _check_int("seed", s.seed, 0, 2**63 - 1)
    if not (isinstance(s.checkpoint_every_s, (int, float)) and s.checkpoint_every_s >= 0):
        raise SettingsError(f"the checkpoint interval must be >= 0 seconds, got {s.checkpoint_every_s}")
    if s.device is not None:
        resolve_device(s.device)
    if s.dtype is not None:
        resolve_dtype(s.dtype)
    if request.size is not None:
        if isinstance(request.size, str):
            request.size = parse_size(request.size)
        h, w = request.size
        _check_int("slide height", h, 1)
        _check_int("slide width", w, 1)
    elif not request.resume:
        raise SettingsError("give the slide size (--size WIDTHxHEIGHT); only --resume can take it from the store")
    if request.resume and request.overwrite:
        raise SettingsError("--resume continues a store and --overwrite replaces it: choose one")
    out = request.path
    if out.parent.exists() and not out.parent.is_dir():
        raise StoreError(f"cannot create {out}: {out.parent} is a file, not a folder; choose another output path")
    if not out.parent.is_dir():
        raise StoreError(f"cannot create {out}: the folder {out.parent} does not exist; create it first")
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} exists and is a file, not a slide store; choose another output path")
    if out.exists() and not (request.resume or request.overwrite):
        raise StoreError(f"{out} already exists; use --resume to continue it or --overwrite to replace it")
    if out.exists() and request.overwrite:
        check_replaceable_store(out)  # refused now, not after a layout was sampled
    if request.resume and not out.exists() and request.size is None:
        raise SettingsError(f"{out} does not exist, so there is nothing to resume; give --size to start it")
    if request.diffusers is not None:
        _validate_diffusers(request, resuming=request.resume and out.exists())
    image = request.models.image if request.models is not None else request.image_model
    names = list(image.config.class_names) if isinstance(image, DiffusionModel) else None
    check_layout_choice(request.layout, names, _image_is_demo(request), resuming=request.resume and out.exists())


def _validate_diffusers(request: GenerateRequest, *, resuming: bool) -> None:
    """A diffusers request: no DiffInfinite model or VAE besides the pipeline, no mask model;
    with no layout given (and no store to resume), label 0 everywhere."""
    request.diffusers.check()
    if request.diffusers.scheduler != "ddim" and request.settings.eta:
        raise SettingsError("eta is DDIM's stochasticity; DPM-Solver++ takes none: leave --eta out (or use ddim)")
    # (with loaded models, the job conditions the loaded pipeline on these options)
    if request.models is None and (request.image_model is not None or request.vae is not None):
        raise SettingsError("a diffusers pipeline brings its own UNet and VAE: leave out --model and --vae")
    if request.layout.mask_model is not None:
        raise SettingsError(
            "a mask model samples DiffInfinite layouts; with a diffusers pipeline give the layout (--mask or --label)"
        )
    if request.layout.samples and not resuming:
        request.layout = replace(request.layout, label=0)


def validate_for_model(
    request: GenerateRequest, models: LoadedModels, size: tuple[int, int], *, existing_store: bool
) -> SlideCost:
    """Checks that need the loaded image model: steps within its schedule, the layout's
    classes, and the slide size against one patch, free memory and free disk."""
    config = models.image.config
    if config.kind != "image":
        raise SettingsError(f"{models.image.source} is a {config.kind} model; generation needs an image model")
    steps = request.settings.steps
    most = getattr(config, "max_steps", config.timesteps)  # a diffusers scheduler's offset takes some
    if steps is not None and steps > most:
        raise SettingsError(f"steps must be between 1 and the model's {most} timesteps, got {steps}")
    check_layout_choice(request.layout, list(config.class_names), _image_is_demo(request), resuming=existing_store)
    return check_slide_size(
        size, config, channels=models.codec.latent_channels, device=resolve_device(request.settings.device),
        out=request.path, scale_factor=models.codec.scale_factor, existing_store=existing_store,
    )  # fmt: skip
