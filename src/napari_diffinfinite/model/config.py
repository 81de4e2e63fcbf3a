"""Explicit, JSON-serialisable model configurations.

A :class:`ModelConfig` says everything needed to use a set of weights: the network
architecture, what the labels mean (names and colours), the codec between pixels and the
space the network works in, the diffusion schedule and the physical pixel size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .mask_encoding import encoding_problem

FORMAT_VERSION = 1

# A qualitative palette for classes whose colours a checkpoint does not carry.
_PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]


# What this tool writes into config.json to recognise its own model folders (never loaded as a field).
WRITTEN_BY_KEY = "written_by"
WRITTEN_BY = "napari-diffinfinite"
MAX_CONFIG_BYTES = 1 << 20

# Caps on the architecture, checked before any network is built. They are far above any
# DiffInfinite model (official: dim 256, mults (1, 2, 4) or (1, 2, 4, 8), 4 channels, 10 classes)
# and far below what would make building the network exhaust memory.
MAX_DIM = 1024
MAX_DIM_MULT = 16
MAX_LEVELS = 6
MAX_CHANNELS = 768  # 3 * 16 * 16: pixel space with 16 x 16 unshuffle
MAX_CLASSES = 256  # labels are uint8
MAX_BLOCKS_PER_LAYER = 8
MAX_HEADS = 64
MAX_DIM_HEAD = 512
MAX_PATCH_SIZE = 8192
PIXEL_SIZE_RANGE_UM = (0.01, 1000.0)  # a model's pixel size: from 100x objectives to coarse overviews
MAX_TIMESTEPS = 100_000
MAX_NAME_LENGTH = 200
OBJECTIVES = ("pred_noise", "pred_v")
CASCADE_SCALES = (2, 4, 8)  # powers of two: each level is a level of the slide store's pyramid
CASCADE_CONDITIONS = ("image", "latent")


def is_int(value: Any) -> bool:
    """An integer from JSON (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite number from JSON (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_colour(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(is_int(v) and 0 <= v <= 255 for v in value)


def json_type(value: Any) -> str:
    """The type of a JSON value as a message names it."""
    return "null" if value is None else type(value).__name__


def refuse_json_constant(name: str) -> Any:
    """``json.loads(parse_constant=...)``: NaN and Infinity are not JSON, and not valid settings."""
    raise ValueError(f"{name} is not a number JSON allows")


def int_problem(name: str, value: Any, low: int, high: int) -> list[str]:
    """``[message]`` when ``value`` is not an integer from ``low`` to ``high``, else ``[]``; the
    checks of model configs and of diffusers pipeline configs share it."""
    if not is_int(value):
        return [f"{name} must be an integer, not {json_type(value)} {value!r:.40}"]
    if not low <= value <= high:
        return [f"{name} must be between {low} and {high}, got {value}"]
    return []


def _unet_problems(unet: UNetConfig) -> list[str]:
    problems = int_problem("unet.dim", unet.dim, 1, MAX_DIM)
    mults = unet.dim_mults
    if not isinstance(mults, tuple) or not 1 <= len(mults) <= MAX_LEVELS:
        problems.append(f"unet.dim_mults must be a list of 1 to {MAX_LEVELS} integers, got {mults!r:.60}")
    else:
        for i, m in enumerate(mults):
            problems += int_problem(f"unet.dim_mults[{i}]", m, 1, MAX_DIM_MULT)
    problems += int_problem("unet.channels", unet.channels, 1, MAX_CHANNELS)
    problems += int_problem("unet.num_classes", unet.num_classes, 1, MAX_CLASSES)
    problems += int_problem("unet.resnet_block_groups", unet.resnet_block_groups, 1, MAX_DIM)
    problems += int_problem("unet.block_per_layer", unet.block_per_layer, 1, MAX_BLOCKS_PER_LAYER)
    problems += int_problem("unet.attention_heads", unet.attention_heads, 1, MAX_HEADS)
    problems += int_problem("unet.attention_dim_head", unet.attention_dim_head, 1, MAX_DIM_HEAD)
    problems += int_problem("unet.condition_channels", unet.condition_channels, 0, MAX_CHANNELS)
    if not problems and unet.dim % unet.resnet_block_groups:
        problems.append(
            f"unet.dim {unet.dim} must be a multiple of unet.resnet_block_groups {unet.resnet_block_groups}"
        )
    return problems


def _names_problems(name: str, names: Any, count: int | None) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return [f"{name} must be a list of strings, got {json_type(names)}"]
    problems = []
    if count is not None and len(names) != count:
        problems.append(f"{name} must have {count} entries, got {len(names)}")
    if any(not n.strip() or len(n) > MAX_NAME_LENGTH for n in names):
        problems.append(f"{name} must be non-empty and at most {MAX_NAME_LENGTH} characters long")
    seen: dict[str, str] = {}
    for n in names:
        key = n.strip().casefold()
        if key in seen:
            problems.append(f"{name} has a duplicate: {seen[key]!r} and {n!r} (names must be unique)")
            break
        seen[key] = n
    return problems


def _model_problems(c: ModelConfig) -> list[str]:
    problems = []
    if c.kind not in ("image", "mask"):
        problems.append(f"kind must be 'image' or 'mask', not {c.kind!r:.40}")
    if c.codec not in ("sd2-vae", "identity"):
        problems.append(f"codec must be 'sd2-vae' or 'identity', not {c.codec!r:.40}")
    if not is_real(c.latent_scale) or c.latent_scale <= 0:
        problems.append(f"latent_scale must be a positive number, got {c.latent_scale!r:.40}")
    problems += int_problem("pixel_unshuffle", c.pixel_unshuffle, 1, 16)
    problems += int_problem("patch_size", c.patch_size, 1, MAX_PATCH_SIZE)
    problems += int_problem("timesteps", c.timesteps, 1, MAX_TIMESTEPS)
    if is_int(c.timesteps):
        problems += int_problem("sampling_steps", c.sampling_steps, 1, c.timesteps)
    problems += int_problem("mask_downsample", c.mask_downsample, 1, 64)
    problems += int_problem("layout_upsample", c.layout_upsample, 1, 64)
    problems += int_problem("format_version", c.format_version, 1, FORMAT_VERSION)
    if not is_real(c.eta) or not 0 <= c.eta <= 1:
        problems.append(f"eta must be a number between 0 and 1, got {c.eta!r:.40}")
    if c.default_omega is not None and (not is_real(c.default_omega) or not 0 <= c.default_omega <= 50):
        problems.append(f"default_omega must be a number between 0 and 50 or null, got {c.default_omega!r:.40}")
    low, high = PIXEL_SIZE_RANGE_UM
    if c.pixel_size_um is not None and (not is_real(c.pixel_size_um) or not low <= c.pixel_size_um <= high):
        problems.append(
            f"pixel_size_um must be a number from {low:g} to {high:g} (um) or null, got {c.pixel_size_um!r:.40}"
        )
    if c.num_labels is not None:
        problems += int_problem("num_labels", c.num_labels, 2, MAX_CLASSES)
    if not isinstance(c.description, str):
        problems.append(f"description must be a string, not {json_type(c.description)}")
    if not isinstance(c.extra, dict):
        problems.append(f"extra must be a JSON object, not {json_type(c.extra)}")
    if c.beta_schedule != "cosine" or c.objective not in OBJECTIVES:
        problems.append("only the cosine schedule with the pred_noise or pred_v objective is supported")
    problems += _cascade_problems(c)
    if problems or not isinstance(c.unet, UNetConfig) or _unet_problems(c.unet):
        return problems  # the checks below need sound numbers

    if c.codec == "sd2-vae" and c.unet.channels != 4:
        problems.append(f"the SD-2 VAE has 4 latent channels but the network has {c.unet.channels}")
    if c.codec == "identity" and c.unet.channels != 3 * c.pixel_unshuffle**2:
        problems.append(
            f"a pixel-space network with pixel_unshuffle={c.pixel_unshuffle} needs "
            f"{3 * c.pixel_unshuffle**2} channels, not {c.unet.channels}"
        )
    if c.kind == "image" and c.num_labels is not None and c.num_labels != c.unet.num_classes:
        problems.append(f"num_labels ({c.num_labels}) is for mask models; an image model has unet.num_classes labels")
    labels = c.num_labels if c.kind == "mask" and c.num_labels else c.unet.num_classes
    if c.kind == "image" and c.mask_encoding != "grey":
        problems.append("mask_encoding is for mask models; leave it out of an image model's config")
    elif (problem := encoding_problem(c.mask_encoding, labels)) is not None:
        problems.append(problem)
    problems += _layout_upsample_problems(c)
    problems += _names_problems("class_names", c.class_names, labels)
    if not isinstance(c.class_colors, list):
        problems.append(f"class_colors must be a list of [R, G, B] colours, got {json_type(c.class_colors)}")
    else:
        if len(c.class_colors) != labels:
            problems.append(f"class_colors must have {labels} entries (one per class), got {len(c.class_colors)}")
        bad = [(i, col) for i, col in enumerate(c.class_colors) if not _is_colour(col)]
        if bad:
            i, col = bad[0]
            problems.append(f"class_colors[{i}] = {col!r:.40} is not a colour: use three integers 0-255 (R, G, B)")
    if c.condition_names is not None:
        problems += _names_problems("condition_names", c.condition_names, c.unet.num_classes)
    step = c.scale_factor * c.unet.downsampling
    if c.patch_size % step:
        problems.append(f"patch_size {c.patch_size} must be a multiple of {step}")
    return problems


def _layout_upsample_problems(c: ModelConfig) -> list[str]:
    """``layout_upsample`` is a mask model's, divides ``mask_downsample`` and needs one-hot layouts."""
    if c.layout_upsample == 1:
        return []
    if c.kind != "mask":
        return ["layout_upsample is for mask models; leave it out of an image model's config"]
    problems = []
    if c.mask_downsample % c.layout_upsample:
        problems.append(
            f"layout_upsample {c.layout_upsample} must divide mask_downsample {c.mask_downsample} "
            "(the label canvas is at layout_upsample / mask_downsample of the slide)"
        )
    if c.mask_encoding != "one-hot":
        problems.append(
            "layout_upsample needs mask_encoding 'one-hot': upsampling grey levels would draw the "
            "classes between two neighbours along their border"
        )
    return problems


def _cascade_problems(c: ModelConfig) -> list[str]:
    """A cascade stage (``cascade: {parent_scale, condition}``) and its extra input channels."""
    cascade = c.cascade
    if cascade is None:
        if isinstance(c.unet, UNetConfig) and c.unet.condition_channels not in (0, None):
            return ["unet.condition_channels is only for cascade models (give 'cascade' or set it to 0)"]
        return []
    if not isinstance(cascade, dict):
        return [f"cascade must be a JSON object {{parent_scale, condition}} or null, not {json_type(cascade)}"]
    problems = []
    unknown = sorted(set(cascade) - {"parent_scale", "condition"})
    if unknown:
        problems.append(f"unknown keys in cascade: {', '.join(unknown)} (known: parent_scale, condition)")
    scale = cascade.get("parent_scale")
    if not is_int(scale) or scale not in CASCADE_SCALES:
        problems.append(f"cascade.parent_scale must be one of {', '.join(map(str, CASCADE_SCALES))}, got {scale!r:.40}")
    condition = cascade.get("condition")
    if condition not in CASCADE_CONDITIONS:
        problems.append(f"cascade.condition must be 'image' or 'latent', not {condition!r:.40}")
    if c.kind != "image":
        problems.append("only image models can be cascade stages")
    if problems or not isinstance(c.unet, UNetConfig) or not is_int(c.pixel_unshuffle):
        return problems
    expected = cascade_condition_channels(c)
    if c.unet.condition_channels != expected:
        problems.append(
            f"a cascade stage conditioned on the lower level's {condition} needs unet.condition_channels = "
            f"{expected}, not {c.unet.condition_channels}"
        )
    return problems


def cascade_condition_channels(c: ModelConfig) -> int:
    """Extra input channels of a cascade stage: the lower level's latent (``condition: latent``,
    the same codec: ``unet.channels``), or its RGB image folded like the codec folds pixels
    (``condition: image``: 3 channels per pixel of the scale_factor x scale_factor block under
    each latent pixel)."""
    if c.cascade is None:
        return 0
    if c.cascade.get("condition") == "latent":
        return c.unet.channels
    return 3 * c.scale_factor**2


def default_class_names(num_classes: int) -> list[str]:
    return ["unknown"] + [f"class {i}" for i in range(1, num_classes)]


def default_class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    return [_PALETTE[i % len(_PALETTE)] for i in range(num_classes)]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a DiffInfinite UNet (the official YAML's ``unet`` section)."""

    dim: int = 256
    dim_mults: tuple[int, ...] = (1, 2, 4)
    channels: int = 4
    num_classes: int = 5
    resnet_block_groups: int = 2
    block_per_layer: int = 2
    attention_heads: int = 4
    attention_dim_head: int = 32
    condition_channels: int = 0  # cascade stages: the lower level's channels, concatenated to the input

    @property
    def downsampling(self) -> int:
        """Factor by which the network downsamples: patch sides must be multiples of it."""
        return 2 ** (len(self.dim_mults) - 1)


OFFICIAL_IMAGE_UNETS = {
    5: UNetConfig(dim=256, dim_mults=(1, 2, 4), channels=4, num_classes=5),
    10: UNetConfig(dim=256, dim_mults=(1, 2, 4), channels=4, num_classes=10),
}
OFFICIAL_MASK_UNET = UNetConfig(dim=64, dim_mults=(1, 2, 4, 8), channels=4, num_classes=2)


@dataclass
class ModelConfig:
    """Everything that turns weights into a usable model.

    ``kind``: "image" (mask-conditioned image model) or "mask" (layout model).
    ``class_names``/``class_colors``: indexed by label; label 0 is "unknown", the
    unconditional class. For a mask model these describe the labels of the layouts it
    produces (``num_labels`` of them) and ``condition_names`` its own ``num_classes``.
    ``codec``: "sd2-vae" (Stable Diffusion 2 VAE latents divided by ``latent_scale``) or
    "identity" (pixel space, images scaled to [-1, 1]; with ``pixel_unshuffle`` f > 1 each
    f x f block of pixels is folded into 3*f*f channels, a lossless rearrangement that lets a
    small network cover f*f times more pixels per evaluation).
    ``patch_size``: side of a sampled patch in pixels (the network sees
    ``patch_size // scale_factor`` latent pixels).
    ``mask_encoding``: how a mask model writes labels as an image, DiffInfinite's ``"grey"``
    or ``"one-hot"`` (one RGB channel per class; see :mod:`.mask_encoding`).
    ``layout_upsample``: a mask model samples its layout at 1/``mask_downsample`` of the slide;
    with f > 1 the decoded layout is upsampled f times (bilinear, per class channel: one-hot only)
    before it is read and cleaned, so the label canvas is at f/``mask_downsample`` of the slide.
    A model that sees a large field at a coarse scale then gives smooth borders, and the
    clean-up's band along every border (a fixed number of canvas pixels) is f times narrower.
    ``objective``: what the network predicts, the noise (``pred_noise``, DiffInfinite's) or
    the velocity ``v = sqrt(a) eps - sqrt(1 - a) x0`` (``pred_v``, stabler for cascade stages).
    ``cascade``: ``None`` for a model that samples a slide alone, or
    ``{"parent_scale": s, "condition": "image" | "latent"}`` for a stage of a
    multi-magnification cascade: it samples at ``s`` times the magnification of the stage
    below and sees that stage's image (or latent), upsampled, concatenated to its input
    (``unet.condition_channels`` extra channels, see :func:`cascade_condition_channels`).
    """

    kind: str
    unet: UNetConfig
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    codec: str = "sd2-vae"
    latent_scale: float = 50.0
    patch_size: int = 512
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    objective: str = "pred_noise"
    sampling_steps: int = 250
    eta: float = 1.0
    default_omega: float | None = None  # guidance the model samples with by default (None: the engine's, 3)
    pixel_size_um: float | None = None
    num_labels: int | None = None
    condition_names: list[str] | None = None
    mask_downsample: int = 4
    mask_encoding: str = "grey"
    layout_upsample: int = 1
    pixel_unshuffle: int = 1
    description: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.class_colors, list) and all(_is_colour(c) for c in self.class_colors):
            self.class_colors = [tuple(c) for c in self.class_colors]
        self.validate()

    @property
    def scale_factor(self) -> int:
        return 8 if self.codec == "sd2-vae" else self.pixel_unshuffle

    @property
    def latent_patch(self) -> int:
        return self.patch_size // self.scale_factor

    def validate(self) -> None:
        """Refuse a configuration the engine cannot use, with every problem named at once.

        The one check of a model configuration: loading (our folders and official
        checkpoints), ``diffinfinite info``, ``convert`` and ``generate`` all go through it,
        so none of them accepts what another refuses. It runs before any network is built;
        the architecture caps keep a hostile file from making the loader allocate a network
        out of proportion to the weights it holds.
        """
        problems = (
            _unet_problems(self.unet)
            if isinstance(self.unet, UNetConfig)
            else [f"unet must be an architecture section, not {type(self.unet).__name__}"]
        )
        problems += _model_problems(self)
        if problems:
            raise CheckpointError(
                "invalid model configuration: " + "; ".join(problems) + ". Fix the model's config.json (or the "
                "options given to convert) or get the model again from its source."
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet"]["dim_mults"] = list(self.unet.dim_mults)
        data["class_colors"] = [list(c) for c in self.class_colors]
        if self.mask_encoding == "grey":  # DiffInfinite's encoding: config.json as it always was
            del data["mask_encoding"]
        if self.layout_upsample == 1:
            del data["layout_upsample"]
        if self.cascade is None:  # single-scale models keep the config.json they always had
            del data["cascade"]
            if not self.unet.condition_channels:
                del data["unet"]["condition_channels"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise CheckpointError(f"a model config must be a JSON object, not {type(data).__name__}")
        data = dict(data)
        data.pop(WRITTEN_BY_KEY, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown keys in model config: {', '.join(unknown)}")
        version = data.get("format_version", FORMAT_VERSION)
        if is_int(version) and version > FORMAT_VERSION:
            raise CheckpointError(
                f"model config format {data['format_version']} is newer than this napari-diffinfinite "
                f"understands ({FORMAT_VERSION}); upgrade napari-diffinfinite"
            )
        unet = data.pop("unet", None)
        if not isinstance(unet, dict):
            raise CheckpointError(f"the model config's 'unet' section must be a JSON object, not {json_type(unet)}")
        unknown = sorted(set(unet) - {f.name for f in dataclasses.fields(UNetConfig)})
        if unknown:
            raise CheckpointError(f"unknown keys in the model config's 'unet' section: {', '.join(unknown)}")
        unet = dict(unet)
        if isinstance(unet.get("dim_mults"), list):
            unet["dim_mults"] = tuple(unet["dim_mults"])
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
            and f.name != "unet"
        )
        if missing:
            raise CheckpointError(f"incomplete model config: missing {', '.join(missing)}")
        return cls(unet=UNetConfig(**unet), **data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read and validate ``config.json``; every problem becomes a :class:`CheckpointError`."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise CheckpointError(f"is {size:,} bytes; a model config is a few kB (at most {MAX_CONFIG_BYTES:,})")
            data = json.loads(path.read_bytes(), parse_constant=refuse_json_constant)
            return cls.from_dict(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CheckpointError(
                f"{path} is not valid JSON ({exc}); restore the file from the model's source"
            ) from None
        except OSError as exc:
            raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None


def official_config(kind: str, unet: UNetConfig, num_labels: int | None = None) -> ModelConfig:
    """The configuration the official code uses for a checkpoint with this architecture.

    ``num_labels``: label levels of a mask model (its checkpoint does not record them; 5 if None).
    Validated like any configuration, so an architecture guessed from a file's shapes is capped
    before any network is built.
    """
    problems = _unet_problems(unet)
    if problems:  # before anything is sized by these numbers (the class names below)
        raise CheckpointError("invalid model architecture: " + "; ".join(problems))
    if kind == "image":
        return ModelConfig(
            kind="image",
            unet=unet,
            class_names=default_class_names(unet.num_classes),
            class_colors=default_class_colors(unet.num_classes),
            codec="sd2-vae" if unet.channels == 4 else "identity",
            patch_size=512 if unet.channels == 4 else 64,
        )
    num_labels = 5 if num_labels is None else num_labels
    return ModelConfig(
        kind="mask",
        unet=unet,
        class_names=default_class_names(num_labels),
        class_colors=default_class_colors(num_labels),
        codec="sd2-vae" if unet.channels == 4 else "identity",
        patch_size=128 if unet.channels == 4 else 32,
        num_labels=num_labels,
        condition_names=[f"condition {i}" for i in range(unet.num_classes)],
    )
