"""The engine API: load models, read or sample layouts, generate slides into a slide store.

The whole job is one call, :func:`run_generate` (a :class:`GenerateRequest` in, a finished
:class:`~napari_diffinfinite.slide.store.SlideStore` out, progress and cancel through); the
CLI, the napari widgets and ``generate-many`` all use it. The pieces are public too:
:func:`load_models` (the models a user picked, loaded once), :func:`resume_slide` (an
interrupted store: its size, layout and settings), :func:`read_layout` (a mask from any path),
:func:`sample_layout`, and the slide geometry in :mod:`.geometry`. Nothing here imports Qt
or napari.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it. Loaded on first use (PEP 562), so that the
#: napari reader, which needs only :mod:`.geometry`, does not import torch (4 s) for a slide.
_SOURCES = {
    **dict.fromkeys(
        ("MAX_CANVAS_SIDE", "SlideCost", "canvas_downsample", "canvas_shape", "canvas_transform",
         "check_slide_size", "format_size", "latent_shape", "parse_size", "slide_cost"),
        "geometry",
    ),
    **dict.fromkeys(("ResumePoint", "generate_slide", "resume_slide", "run_generate"), "job"),
    **dict.fromkeys(
        ("LayoutSource", "build_layout", "describe_layout", "mask_from_path", "read_layout", "sample_layout"), "layout"
    ),
    **dict.fromkeys(
        ("LoadedModels", "available_devices", "describe_model", "dtype_name", "load_codec", "load_image_model",
         "load_mask_model", "load_models", "resolve_device", "resolve_dtype"),
        "models",
    ),
    **dict.fromkeys(
        ("DiffusersOptions", "GenerateRequest", "GenerateSettings", "validate", "validate_for_model"), "request"
    ),
}  # fmt: skip

if TYPE_CHECKING:
    from .geometry import (
        MAX_CANVAS_SIDE,
        SlideCost,
        canvas_downsample,
        canvas_shape,
        canvas_transform,
        check_slide_size,
        format_size,
        latent_shape,
        parse_size,
        slide_cost,
    )
    from .job import ResumePoint, generate_slide, resume_slide, run_generate
    from .layout import LayoutSource, build_layout, describe_layout, mask_from_path, read_layout, sample_layout
    from .models import (
        LoadedModels,
        available_devices,
        describe_model,
        dtype_name,
        load_codec,
        load_image_model,
        load_mask_model,
        load_models,
        resolve_device,
        resolve_dtype,
    )
    from .request import DiffusersOptions, GenerateRequest, GenerateSettings, validate, validate_for_model


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "MAX_CANVAS_SIDE", "DiffusersOptions", "GenerateRequest", "GenerateSettings", "LayoutSource", "LoadedModels", "ResumePoint",
    "SlideCost", "available_devices", "build_layout", "canvas_downsample", "canvas_shape", "canvas_transform",
    "check_slide_size", "describe_layout", "describe_model", "dtype_name", "format_size", "generate_slide", "latent_shape",
    "load_codec", "load_image_model", "load_mask_model", "load_models", "mask_from_path", "parse_size",
    "read_layout", "resolve_device", "resolve_dtype", "resume_slide", "run_generate", "sample_layout",
    "slide_cost", "validate", "validate_for_model",
]  # fmt: skip
