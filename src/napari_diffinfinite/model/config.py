"""Explicit, JSON-serialisable model configurations.

A :class:`ModelConfig` says everything needed to use a set of weights: the network
architecture, what the labels mean (names and colours), the codec between pixels and the
space the network works in, the diffusion schedule and the physical pixel size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

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
    pixel_size_um: float | None = None
    num_labels: int | None = None
    condition_names: list[str] | None = None
    mask_downsample: int = 4
    pixel_unshuffle: int = 1
    description: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_colors = [tuple(int(v) for v in c) for c in self.class_colors]
        self.validate()

    @property
    def scale_factor(self) -> int:
        return 8 if self.codec == "sd2-vae" else self.pixel_unshuffle

    @property
    def latent_patch(self) -> int:
        return self.patch_size // self.scale_factor

    def validate(self) -> None:
        problems = []
        if self.kind not in ("image", "mask"):
            problems.append(f"kind must be 'image' or 'mask', not {self.kind!r}")
        if self.codec not in ("sd2-vae", "identity"):
            problems.append(f"codec must be 'sd2-vae' or 'identity', not {self.codec!r}")
        if self.codec == "sd2-vae" and self.unet.channels != 4:
            problems.append(f"the SD-2 VAE has 4 latent channels but the network has {self.unet.channels}")
        if self.codec == "identity" and self.unet.channels != 3 * self.pixel_unshuffle**2:
            problems.append(
                f"a pixel-space network with pixel_unshuffle={self.pixel_unshuffle} needs "
                f"{3 * self.pixel_unshuffle**2} channels, not {self.unet.channels}"
            )
        labels = self.num_labels if self.kind == "mask" and self.num_labels else self.unet.num_classes
        if len(self.class_names) != labels or len(self.class_colors) != labels:
            problems.append(
                f"{labels} classes need {labels} names and colours, got {len(self.class_names)} names "
                f"and {len(self.class_colors)} colours"
            )
        if self.patch_size % self.scale_factor or (self.latent_patch % self.unet.downsampling):
            problems.append(
                f"patch_size {self.patch_size} must be a multiple of {self.scale_factor * self.unet.downsampling}"
            )
        if self.beta_schedule != "cosine" or self.objective != "pred_noise":
            problems.append("only the cosine schedule with the pred_noise objective is supported")
        if problems:
            raise CheckpointError("invalid model configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet"]["dim_mults"] = list(self.unet.dim_mults)
        data["class_colors"] = [list(c) for c in self.class_colors]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown keys in model config: {', '.join(unknown)}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise CheckpointError(
                f"model config format {data['format_version']} is newer than this napari-diffinfinite "
                f"understands ({FORMAT_VERSION}); upgrade napari-diffinfinite"
            )
        try:
            unet = dict(data.pop("unet"))
            unet["dim_mults"] = tuple(unet["dim_mults"])
            return cls(unet=UNetConfig(**unet), **data)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"incomplete model config: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def official_config(kind: str, unet: UNetConfig) -> ModelConfig:
    """The configuration the official code uses for a checkpoint with this architecture."""
    if kind == "image":
        return ModelConfig(
            kind="image",
            unet=unet,
            class_names=default_class_names(unet.num_classes),
            class_colors=default_class_colors(unet.num_classes),
            codec="sd2-vae" if unet.channels == 4 else "identity",
            patch_size=512 if unet.channels == 4 else 64,
        )
    num_labels = 5
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
