"""Label masks over a slide, sampled at any resolution without materialising the full slide.

A mask is held as a small label *canvas* (one uint8 class per pixel, 0 = unknown) stretched
over the slide. Slide pixel (y, x) takes canvas pixel ``((y * ch) // H, (x * cw) // W)``
(nearest neighbour), so any region at any step costs work proportional to the region only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import MaskError

_TIFF_SUFFIXES = {".tif", ".tiff"}
_PILLOW_COLOUR_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}

_CONVERT_HINT = (
    "Save one class index per pixel as an 8-bit greyscale image, e.g. with numpy and Pillow: "
    "Image.fromarray(labels.astype(np.uint8), mode='L').save('mask.png'), where labels[y, x] "
    "is 0 (unknown) or a class number of the model"
)


@runtime_checkable
class MaskSource(Protocol):
    """Labels of every slide pixel, computed on demand per region."""

    shape: tuple[int, int]
    canvas: np.ndarray

    def region(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
        """uint8 labels of slide rows ``y0:y1:step`` and columns ``x0:x1:step``.

        Coordinates outside the slide are clamped to its nearest edge pixel.
        """
        ...


def _slide_shape(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise MaskError(f"a slide must be at least 1 x 1 px, got {h} x {w}")
    return h, w


def _check_step(step: int) -> None:
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")


class CanvasMask:
    """A label canvas stretched over a slide of ``shape`` by nearest neighbour."""

    def __init__(self, canvas: np.ndarray, shape: tuple[int, int]) -> None:
        canvas = np.asarray(canvas)
        if canvas.ndim != 2 or canvas.size == 0:
            raise MaskError(f"a label canvas must be a non-empty 2-D array, got shape {canvas.shape}")
        self.canvas: np.ndarray = _as_uint8_labels(canvas, "the label canvas")
        self.shape: tuple[int, int] = _slide_shape(shape)

    def _index(self, start: int, stop: int, step: int, axis: int) -> np.ndarray:
        size = self.shape[axis]
        coords = np.clip(np.arange(start, stop, step, dtype=np.int64), 0, size - 1)
        return (coords * self.canvas.shape[axis]) // size

    def region(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
        _check_step(step)
        rows = self._index(y0, y1, step, 0)
        cols = self._index(x0, x1, step, 1)
        return self.canvas[rows[:, None], cols[None, :]]

    def __repr__(self) -> str:
        return f"CanvasMask(canvas={self.canvas.shape}, shape={self.shape})"


class ConstantMask:
    """Every slide pixel has the same label."""

    def __init__(self, label: int, shape: tuple[int, int]) -> None:
        if not 0 <= int(label) <= 255:
            raise MaskError(f"a label must be in 0..255, got {label}")
        self.label = int(label)
        self.canvas: np.ndarray = np.full((1, 1), self.label, dtype=np.uint8)
        self.shape: tuple[int, int] = _slide_shape(shape)

    def region(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
        _check_step(step)
        rows = len(range(y0, y1, step))
        cols = len(range(x0, x1, step))
        return np.full((rows, cols), self.label, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"ConstantMask(label={self.label}, shape={self.shape})"


def _as_uint8_labels(array: np.ndarray, what: str) -> np.ndarray:
    """Convert an integer/bool label array to uint8, refusing floats and values outside 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise MaskError(
            f"{what} has {array.dtype} pixels, but labels must be integers (0 = unknown, "
            f"1.. = classes). {_CONVERT_HINT}"
        )
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise MaskError(
            f"{what} has label values from {lo} to {hi}, but labels must be in 0..255 "
            f"(0 = unknown, 1.. = classes). {_CONVERT_HINT}"
        )
    return array.astype(np.uint8)


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        mode = image.mode
        if mode in _PILLOW_COLOUR_MODES:
            raise MaskError(
                f"{path} is a {mode} colour image, but a label image holds one integer class "
                f"per pixel (0 = unknown). {_CONVERT_HINT}"
            )
        # In a palette ("P") image each pixel stores a palette index: that index is the label.
        array = np.asarray(image)
    if mode in {"LA", "PA"}:
        return array[..., 0]
    return array


def _read_with_tifffile(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        array = series.asarray()
    keep = [i for i, ax in enumerate(axes) if ax in "YXS" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "S" in axes:
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    if axes not in {"YX", "YXS"}:
        raise MaskError(
            f"{path} holds a {series.shape} image with axes {series.axes!r}; a label image is "
            f"a single 2-D plane with one integer class per pixel (0 = unknown). {_CONVERT_HINT}"
        )
    return array


def load_label_image(path: str | Path) -> np.ndarray:
    """Read a PNG/TIFF (or other Pillow-readable) label image as uint8 (h, w) labels.

    Accepts single-channel integer images, palette images (the palette index is the label)
    and RGB/RGBA images whose colour channels are all equal (one is taken). Raises MaskError,
    naming the file and the fix, for colour images, floats, values above 255, and files that
    are missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file {path} does not exist (or is not a file); check the path")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array = _read_with_tifffile(path)
        else:
            array = _read_with_pillow(path)
    except MaskError:
        raise
    except Exception as exc:  # any decoder failure means the same thing to the user
        raise MaskError(
            f"cannot read mask file {path} ({type(exc).__name__}: {exc}); save it as a PNG or TIFF label image"
        ) from exc

    if array.ndim == 3:
        channels = array.shape[-1]
        colour = array[..., : min(channels, 3)]
        if not (colour == colour[..., :1]).all():
            distinct = len(np.unique(colour.reshape(-1, colour.shape[-1]), axis=0))
            raise MaskError(
                f"{path} is a colour image ({distinct} distinct colours), but a label image "
                f"holds one integer class per pixel (0 = unknown, 1.. = the model's classes). "
                f"Map each colour to its class number. {_CONVERT_HINT}"
            )
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise MaskError(f"{path} is not a 2-D image (shape {array.shape}); {_CONVERT_HINT}")
    return np.ascontiguousarray(_as_uint8_labels(array, str(path)))


def validate_labels(canvas: np.ndarray, num_classes: int, class_names: list[str] | None = None) -> None:
    """Raise MaskError if ``canvas`` uses labels the model does not know (>= ``num_classes``)."""
    canvas = np.asarray(canvas)
    if canvas.size == 0 or int(canvas.max()) < num_classes:
        return
    counts = np.bincount(canvas.ravel().astype(np.intp, copy=False))
    bad = [int(v) for v in np.nonzero(counts)[0] if v >= num_classes]
    found = ", ".join(f"{v} ({counts[v]} px)" for v in bad)
    if class_names:
        known = ", ".join(f"{i} = {name}" for i, name in enumerate(class_names[:num_classes]))
    else:
        known = f"0 (unknown) to {num_classes - 1}"
    raise MaskError(
        f"the mask uses label values the model does not have: {found}. The model's classes "
        f"are {known}. Relabel those pixels (0 = unknown) or use a model with these classes."
    )


def mask_from_file(path: str | Path, shape: tuple[int, int]) -> CanvasMask:
    """Load a label image and stretch it over a slide of ``shape``."""
    return CanvasMask(load_label_image(path), shape)


def latent_labels(source: MaskSource, latent_shape: tuple[int, int], scale_factor: int) -> np.ndarray:
    """uint8 (h, w) labels of a latent grid: latent pixel (i, j) takes slide pixel (i*s, j*s).

    This is what the official code's nearest-neighbour ``F.interpolate`` of the mask does.
    """
    h, w = latent_shape
    s = scale_factor
    return source.region(0, h * s, 0, w * s, step=s)


MaskFileKindName = Literal["geojson", "real slide", "label image"]


@dataclass(frozen=True)
class MaskFileKind:
    """How a mask file is read: ``kind`` and, for the user, ``reason`` (why it was taken so)."""

    kind: MaskFileKindName
    reason: str


def mask_file_kind(path: str | Path) -> MaskFileKind:
    """Decide by content whether ``path`` is QuPath GeoJSON, a real slide, or a label image.

    A real slide is a file OpenSlide opens whose vendor format is not the generic tiled TIFF
    (Aperio SVS, NDPI, MRXS, ...), or a generic tiled TIFF whose pixels are colour (RGB /
    YCbCr). A single-channel TIFF is a label image however it is laid out (tiled, pyramidal,
    OME), so a label TIFF exported by this tool (``*.labels.tif``) reads back as labels.
    """
    path = Path(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return MaskFileKind("geojson", "a GeoJSON file")
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - no OpenSlide, or a file it cannot even probe
        vendor = None
    if vendor is None:
        return MaskFileKind("label image", "not a slide format OpenSlide reads")
    if vendor != "generic-tiff":
        return MaskFileKind("real slide", f"a {vendor} slide")
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            samples, photometric = int(page.samplesperpixel), int(page.photometric)
    except Exception:  # noqa: BLE001 - OpenSlide reads it, tifffile does not: trust OpenSlide
        return MaskFileKind("real slide", "a tiled TIFF OpenSlide reads")
    colour = samples >= 3 and photometric in (2, 6)  # RGB, YCbCr
    if colour:
        return MaskFileKind("real slide", "a tiled colour (RGB) TIFF")
    return MaskFileKind("label image", f"a single-channel TIFF ({samples} sample per pixel)")
