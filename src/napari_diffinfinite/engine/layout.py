"""The tissue layout a slide is generated from: read from any path, given, or sampled.

A layout is a :class:`~napari_diffinfinite.slide.masks.MaskSource` over the slide plus a
description for provenance. :class:`LayoutSource` says where it comes from (exactly one of
a mask file, a constant label, a label canvas, a mask model); :func:`build_layout` makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MaskError, SettingsError
from ..model.codec import Codec
from ..model.pretrained import DiffusionModel
from ..progress import CancelToken, ProgressCallback
from ..sampling import mask_sampler
from ..slide.masks import CanvasMask, ConstantMask, MaskSource, mask_from_file
from .geometry import format_size, patch_batch_that_fits
from .models import ModelSpec, resolve_device, resolve_dtype

DEFAULT_MASK_CONDITION = 1  # "tissue"
DEFAULT_MASK_OMEGA = 0.0  # as upstream
MASK_BATCH = 16  # patch evaluations per network call when sampling a layout (fewer where memory is short)


@dataclass
class LayoutSource:
    """Where the layout of a slide comes from; give at most one of ``mask``, ``label``,
    ``canvas``, ``mask_model`` (none: the demo mask model samples one, when the image model is
    the demo too).

    ``mask``: a label image (PNG/TIFF), a QuPath GeoJSON or a real slide (its tissue layout,
    tissue = ``tissue_label``); ``skip_unknown`` leaves out GeoJSON classes the model lacks
    instead of refusing them; ``include_detections`` paints QuPath detections and cells too
    (by default only annotations are painted). ``canvas``: a uint8 label canvas stretched over the slide (what
    the napari canvas holds); ``source``: a ready mask source (e.g. from :func:`read_layout`),
    described by ``info``. ``mask_model``: a mask model (path, "default" for the demo, or
    loaded) sampled with ``condition`` (a number or a condition's name; None: 1, "tissue"), ``omega`` (None: 0), ``seed`` (None:
    the slide's seed), ``steps`` (None: the model's); ``num_labels`` for an official mask model.
    The sampling options left at None are "not given": a resumed slide keeps its own layout, and
    only given options are compared with the ones it was sampled with.
    """

    mask: str | Path | None = None
    source: MaskSource | None = None
    label: int | None = None
    canvas: np.ndarray | None = None
    mask_model: ModelSpec = None
    condition: int | str | None = None
    omega: float | None = None
    seed: int | None = None
    steps: int | None = None
    tissue_label: int = 1
    num_labels: int | None = None
    skip_unknown: bool = False
    include_detections: bool = False
    info: dict[str, Any] | None = None  # provenance of a given canvas (e.g. how it was painted)

    def chosen(self) -> list[str]:
        """The options that were given, by their CLI names."""
        given = {"--mask": self.mask, "a mask source": self.source, "--label": self.label, "canvas": self.canvas,
                 "--mask-model": self.mask_model}  # fmt: skip
        return [name for name, value in given.items() if value is not None]

    def sampling_options(self) -> dict[str, Any]:
        """The mask-model sampling options that were given (not left at None), by their CLI names."""
        given = {"--mask-condition": self.condition, "--mask-omega": self.omega, "--mask-seed": self.seed,
                 "--mask-steps": self.steps}  # fmt: skip
        return {name: value for name, value in given.items() if value is not None}

    @property
    def samples(self) -> bool:
        """Whether the layout is sampled by a mask model (given, or the demo by default)."""
        return self.mask is None and self.source is None and self.label is None and self.canvas is None


def read_layout(
    path: str | Path,
    size: tuple[int, int],
    class_names: list[str],
    *,
    tissue_label: int = 1,
    skip_unknown: bool = False,
    include_detections: bool = False,
) -> tuple[MaskSource, dict[str, Any]]:
    """A mask source for a slide of ``size`` (H, W) from a file, and a description for provenance.

    * ``.geojson``/``.json``: QuPath annotations, classes matched by name to ``class_names``
      (coordinates are level-0 pixels of the slide being generated); a file with no area
      annotation inside the slide is refused, so a typo never becomes an all-unknown slide;
    * a whole-slide image (``.svs``, ``.ndpi``, ``.mrxs``, a tiled pyramidal ``.tif``): its
      tissue layout, tissue = ``tissue_label``, background = 0, stretched to ``size``;
    * any other image (PNG/TIFF): a label image, one class index per pixel, at any resolution.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MaskError(f"mask file {path} does not exist; check the path")
    if path.is_dir():
        raise MaskError(f"mask {path} is a folder; give a label image, a GeoJSON file or a slide file")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return _read_geojson(path, size, class_names, skip_unknown, include_detections)
    from ..slide.masks import mask_file_kind

    kind = mask_file_kind(path)
    if kind.kind == "real slide":
        from ..slide.tissue import tissue_layout_source

        if not 0 < tissue_label < len(class_names):
            raise MaskError(f"tissue label {tissue_label} is not one of the model's classes 1..{len(class_names) - 1}")
        source = tissue_layout_source(path, tissue_label=tissue_label, slide_shape=size)
        info = {"source": str(path), "type": "real-slide tissue layout", "tissue_label": tissue_label,
                "read_as": kind.reason}  # fmt: skip
        return source, info
    return mask_from_file(path, size), {"source": str(path), "type": "label image", "read_as": kind.reason}


def _read_geojson(
    path: Path, size: tuple[int, int], class_names: list[str], skip_unknown: bool, include_detections: bool = False
):
    from ..slide.geojson import ALL_AREA_TYPES, ANNOTATION_TYPES, geojson_to_labels

    imported = geojson_to_labels(
        path, class_names=class_names, slide_shape=size, on_unknown="skip" if skip_unknown else "error",
        object_types=ALL_AREA_TYPES if include_detections else ANNOTATION_TYPES,
    )  # fmt: skip
    if not imported.painted:
        raise MaskError(
            f"{path} has no area annotation with a class of this model ({imported.summary()}); "
            "export the annotations with their classes from QuPath"
        )
    if not imported.canvas.any():
        raise MaskError(
            f"every annotation in {path} lies outside the {format_size(size)} px slide; GeoJSON coordinates are "
            "level-0 pixels of the slide being generated: give the --size the annotations were drawn on"
        )
    info = {"source": str(path), "type": "geojson", "painted": imported.painted, "unknown": imported.unknown,
            "derived": imported.derived, "skipped_objects": imported.skipped_objects,
            "summary": imported.summary()}  # fmt: skip
    return CanvasMask(imported.canvas, size), info


def describe_layout(info: dict[str, Any]) -> str:
    """One line telling the user how the layout was read (the interpretation of a mask file,
    what a GeoJSON import painted and skipped), from the provenance ``info`` of :func:`build_layout`."""
    kind = info.get("type", "layout")
    source = info.get("source")
    if kind == "geojson":
        return f"layout: GeoJSON {source}: {info.get('summary') or 'painted ' + str(info.get('painted'))}"
    if kind in ("label image", "real-slide tissue layout"):
        text = f"layout: {source} read as a {kind}"
        if kind == "real-slide tissue layout":
            text += f" (tissue = label {info.get('tissue_label')})"
        return text + (f"; {info['read_as']}" if info.get("read_as") else "")
    if kind == "constant":
        return f"layout: label {info.get('label')} everywhere"
    if kind == "sampled":
        return f"layout: sampled by the mask model (condition {info.get('condition')}, seed {info.get('seed')})"
    return f"layout: {kind}"


#: The former name of :func:`read_layout`.
mask_from_path = read_layout


def sample_layout(
    mask_model: DiffusionModel,
    codec: Codec,
    size: tuple[int, int],
    *,
    condition: int | str = DEFAULT_MASK_CONDITION,
    omega: float = DEFAULT_MASK_OMEGA,
    seed: int = 0,
    steps: int | None = None,
    device: str | None = "cpu",
    dtype: str = "float32",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Sample a tissue layout (uint8 label canvas at ``layout_upsample / mask_downsample`` of ``size``).

    ``condition``: a number or a condition's name (the demo's: 0 "any", 1 "tissue").
    """
    config = mask_model.config
    if len(size) != 2 or min(int(size[0]), int(size[1])) < 1:
        raise SettingsError(f"a layout needs a slide size of at least 1 x 1 px, got {tuple(size)}")
    if not np.isfinite(omega):
        raise SettingsError(f"the mask model's guidance must be a finite number, got {omega}")
    condition = condition_index(condition, config)
    if not 0 <= condition < config.unet.num_classes:
        names = config.condition_names or [str(i) for i in range(config.unet.num_classes)]
        raise SettingsError(
            f"mask condition {condition} is not one of the mask model's: "
            + ", ".join(f"{i}={n}" for i, n in enumerate(names))
        )
    if steps is not None and not 1 <= steps <= config.timesteps:
        raise SettingsError(f"mask steps must be between 1 and {config.timesteps}, got {steps}")
    dev = resolve_device(device)
    batch = patch_batch_that_fits(config, dev, MASK_BATCH)  # before a model with huge patches pads the layout
    mask_model.to(dev)
    return mask_sampler.sample_layout(
        mask_model, codec, size, condition=condition, omega=omega, seed=seed, steps=steps, batch_size=batch,
        device=dev, dtype=resolve_dtype(dtype), progress=progress, cancel=cancel,
    )  # fmt: skip


def check_layout_choice(
    layout: LayoutSource, class_names: list[str] | None, image_is_demo: bool, *, resuming: bool = False
) -> None:
    """Refuse conflicting or out-of-range layout options before any work is done.

    ``class_names`` of the image model (``None`` before it is loaded: the label is checked later);
    ``resuming`` an existing store needs no layout (the store's own is used).
    """
    chosen = layout.chosen()
    if len(chosen) > 1:
        raise SettingsError(f"choose one layout source, not {', '.join(chosen)}")
    if layout.label is not None and class_names is not None and not 0 <= layout.label < len(class_names):
        raise MaskError(
            f"label {layout.label} is not one of the model's classes: "
            + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
        )
    if layout.samples and layout.mask_model is None and not image_is_demo and not resuming:
        raise MaskError(
            "give a layout for this model: --mask FILE (label image, GeoJSON or real slide), --label N, "
            "or --mask-model PATH to sample one"
        )
    if layout.mask is not None:
        path = Path(layout.mask).expanduser()
        if not path.exists():
            raise MaskError(f"mask file {path} does not exist; check the path")
        if path.is_dir():
            raise MaskError(f"mask {path} is a folder; give a label image, a GeoJSON file or a slide file")
    if not layout.samples and layout.sampling_options():  # an option that does nothing is a mistake
        raise SettingsError(
            f"{', '.join(layout.sampling_options())} apply to a layout sampled by a mask model, not to "
            f"{chosen[0] if chosen else 'a given layout'}; leave them out"
        )
    if layout.omega is not None and not np.isfinite(layout.omega):
        raise SettingsError(f"the mask model's guidance must be a finite number, got {layout.omega}")


def build_layout(
    layout: LayoutSource,
    size: tuple[int, int],
    class_names: list[str],
    *,
    mask_model: DiffusionModel | None,
    mask_codec: Codec | None,
    seed: int,
    device: str | None,
    dtype: str,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[MaskSource, dict[str, Any]]:
    """The mask source of ``layout`` over a slide of ``size``, and its provenance."""
    if layout.mask is not None:
        return read_layout(layout.mask, size, class_names, tissue_label=layout.tissue_label,
                           skip_unknown=layout.skip_unknown, include_detections=layout.include_detections)  # fmt: skip
    if layout.label is not None:
        return ConstantMask(layout.label, size), {"type": "constant", "label": int(layout.label)}
    if layout.canvas is not None:
        return CanvasMask(layout.canvas, size), dict(layout.info or {"type": "canvas"})
    if layout.source is not None:
        if tuple(layout.source.shape) != tuple(size):
            shape = tuple(layout.source.shape)
            raise MaskError(f"the mask covers {shape[1]}x{shape[0]} px but the slide is {format_size(size)} px")
        return layout.source, dict(layout.info or {"type": type(layout.source).__name__})
    if mask_model is None or mask_codec is None:
        raise SettingsError("the layout is to be sampled but no mask model was loaded")
    options = resolved_sampling(layout, mask_model, seed)
    canvas = sample_layout(
        mask_model, mask_codec, size, **options, device=device, dtype=dtype, progress=progress, cancel=cancel
    )  # fmt: skip
    return CanvasMask(canvas, size), sampled_layout_info(mask_model, options)


def sampled_layout_info(mask_model: DiffusionModel, options: dict[str, Any]) -> dict[str, Any]:
    """The provenance of a layout ``mask_model`` sampled with ``options`` (:func:`resolved_sampling`)."""
    info = {"type": "sampled", "mask_model": {"source": mask_model.source, "sha256": mask_model.sha256}, **options}
    names = mask_model.config.condition_names
    if names and 0 <= options["condition"] < len(names):
        info["condition_name"] = names[options["condition"]]
    return info


def condition_index(condition: int | str | None, config: Any) -> int:
    """A mask model's condition given by number or by name (case-insensitive); None: the default."""
    if condition is None:
        return DEFAULT_MASK_CONDITION
    if isinstance(condition, str):
        names = list(config.condition_names or [])
        for i, name in enumerate(names):
            if name.casefold() == condition.casefold():
                return i
        known = ", ".join(f"{i}={n}" for i, n in enumerate(names)) or "numbers only"
        raise SettingsError(f"the mask model has no condition named {condition[:60]!r}; its conditions: {known}")
    return int(condition)


def resolved_sampling(layout: LayoutSource, mask_model: DiffusionModel, seed: int) -> dict[str, Any]:
    """The condition, omega, seed and steps a layout is sampled with (defaults filled in), as
    :func:`sample_layout` takes them and as a store records them."""
    return {
        "condition": condition_index(layout.condition, mask_model.config),
        "omega": DEFAULT_MASK_OMEGA if layout.omega is None else float(layout.omega),
        "seed": seed if layout.seed is None else int(layout.seed),
        "steps": mask_model.config.sampling_steps if layout.steps is None else int(layout.steps),
    }


def check_resumed_sampling(layout: LayoutSource, saved: dict[str, Any], mask_sha256: str | None, out: Path) -> None:
    """Refuse to resume a slide with mask-model options other than those its layout was sampled with.

    ``saved``: the store's layout provenance; ``mask_sha256``: the mask model given now (None:
    none given). Options not given are not compared (the store's layout is used as it is).
    """
    given = layout.sampling_options()
    if mask_sha256 is None and not given:
        return
    if saved.get("type") != "sampled":
        what = ", ".join((["--mask-model"] if mask_sha256 else []) + list(given))
        raise SettingsError(
            f"cannot resume {out} with {what}: its layout was not sampled by a mask model; resume without them"
        )
    differences = []
    before = (saved.get("mask_model") or {}).get("sha256")
    if mask_sha256 is not None and before and mask_sha256 != before:
        differences.append(f"--mask-model: another model than {(saved.get('mask_model') or {}).get('source')}")
    for name, value in given.items():
        key = name.removeprefix("--mask-")
        if isinstance(value, str):  # a condition by name: against the name the store recorded
            recorded = saved.get("condition_name")
            if recorded is not None and str(recorded).casefold() != value.casefold():
                differences.append(f"{name} {value} (the store's: {recorded})")
        elif key in saved and saved[key] != value:
            differences.append(f"{name} {value} (the store's: {saved[key]})")
    if differences:
        raise SettingsError(
            f"cannot resume {out} with another layout: {'; '.join(differences)}; resume without these options "
            "(the store's layout is used), or start a new slide with --overwrite"
        )
