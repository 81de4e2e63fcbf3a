"""Model configurations for new training runs: presets plus the user's classes.

* ``demo``: the small pixel-space networks of the embedded demo models
  (:mod:`napari_diffinfinite.demo`), trainable on a CPU.
* ``official``: DiffInfinite's published architectures in SD-2 VAE latent space (image UNet
  dim 256, mults (1, 2, 4), 512 px patches; mask UNet dim 64, mults (1, 2, 4, 8), 128 px
  masks), which need a GPU and the VAE.

Class names come from the user (``unknown`` first: label 0 is the unconditional class);
architecture fields can be overridden one by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..demo import demo_image_config, demo_mask_config
from ..errors import CheckpointError, TrainingError
from ..model.config import OFFICIAL_MASK_UNET, ModelConfig, UNetConfig, default_class_colors

PRESETS = ("demo", "official")
UNET_FIELDS = {f.name for f in dataclasses.fields(UNetConfig)}


def parse_class_names(text: str | Sequence[str]) -> list[str]:
    """``"unknown,tumour,stroma"`` -> names; a leading ``unknown`` is added when missing."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise TrainingError("give at least one class name, e.g. --classes tumour,stroma")
    if names[0].casefold() != "unknown":
        names = ["unknown", *names]
    if len(set(n.casefold() for n in names)) != len(names):
        raise TrainingError(f"class names must be unique (ignoring case): {', '.join(names)}")
    return names


def _preset(kind: str, preset: str) -> ModelConfig:
    if preset == "demo":
        config = demo_image_config() if kind == "image" else demo_mask_config()
        config.default_omega = None  # tuned for the shipped weights, not for a new model of their architecture
        return config
    if preset == "official":
        if kind == "image":
            return ModelConfig(
                kind="image", unet=UNetConfig(dim=256, dim_mults=(1, 2, 4), channels=4, num_classes=5),
                class_names=[f"class {i}" for i in range(5)], class_colors=default_class_colors(5),
                codec="sd2-vae", patch_size=512, sampling_steps=250,
            )  # fmt: skip
        return ModelConfig(
            kind="mask", unet=OFFICIAL_MASK_UNET, class_names=[f"class {i}" for i in range(5)],
            class_colors=default_class_colors(5), codec="sd2-vae", patch_size=128, num_labels=5,
            condition_names=["condition 0", "condition 1"], sampling_steps=250,
        )  # fmt: skip
    raise TrainingError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def make_model_config(
    kind: str,
    *,
    preset: str = "demo",
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    condition_names: Sequence[str] | None = None,
    unet: dict[str, Any] | None = None,
    **fields: Any,
) -> ModelConfig:
    """A :class:`ModelConfig` from a preset with the given classes and overrides.

    ``unet``: overrides of the architecture (``dim``, ``dim_mults``, ...); ``fields``:
    overrides of other config fields (``patch_size``, ``pixel_unshuffle``, ``mask_encoding``,
    ``pixel_size_um``, ``sampling_steps``, ``description``, ``objective``, ``cascade``, ...).
    A ``cascade`` stage gets the input channels its condition needs. For a pixel-space model,
    changing ``pixel_unshuffle`` also sets the channel count to ``3 * f * f``.
    """
    if kind not in ("image", "mask"):
        raise TrainingError(f"model kind must be 'image' or 'mask', not {kind!r}")
    base = _preset(kind, preset).to_dict()
    unet_data = dict(base.pop("unet"))
    for key, value in (unet or {}).items():
        if key not in UNET_FIELDS:
            raise TrainingError(f"unknown network option {key!r}; known: {', '.join(sorted(UNET_FIELDS))}")
        if value is not None:
            unet_data[key] = list(value) if key == "dim_mults" else value
    for key, value in fields.items():
        if value is not None:
            base[key] = value
    if base["codec"] == "identity":
        unet_data["channels"] = 3 * int(base.get("pixel_unshuffle", 1)) ** 2
    cascade = base.get("cascade")
    if isinstance(cascade, dict):  # a cascade stage: the lower level's channels join the input
        factor = 8 if base["codec"] == "sd2-vae" else int(base.get("pixel_unshuffle", 1))
        latent = cascade.get("condition") == "latent"
        unet_data["condition_channels"] = unet_data["channels"] if latent else 3 * factor**2
    if class_names is not None:
        names = parse_class_names(class_names)
        base["class_names"] = names
        base["class_colors"] = [list(c) for c in (class_colors or _colors_for(names, base))]
        if kind == "image":
            unet_data["num_classes"] = len(names)
        else:
            base["num_labels"] = len(names)
    if kind == "mask" and condition_names is not None:
        base["condition_names"] = list(condition_names)
        unet_data["num_classes"] = len(condition_names)
    base["unet"] = unet_data
    try:
        return ModelConfig.from_dict(base)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from exc


def _colors_for(names: list[str], base: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Keep the preset's colours for classes of the same name, the palette for the rest."""
    known = {n.casefold(): tuple(c) for n, c in zip(base["class_names"], base["class_colors"])}
    palette = default_class_colors(len(names))
    return [known.get(n.casefold(), palette[i]) for i, n in enumerate(names)]


def narrow_network_note(config: ModelConfig) -> str | None:
    """A warning when a pixel-space network is narrower than its input: its first layer cannot
    carry the noise it must predict, and every sample keeps some of it (a 4x4-unshuffle mask
    model of width 16 drew layouts in salt-and-pepper noise, 99 % "unknown" after the clean-up)."""
    channels = config.unet.channels
    if config.codec != "identity" or config.unet.dim >= channels:
        return None
    return (
        f"the network (--dim {config.unet.dim}) is narrower than its {channels} input channels "
        f"(pixel unshuffle {config.pixel_unshuffle}): its samples will keep some noise; use --dim {channels} or more, "
        "or a smaller --pixel-unshuffle"
    )
