"""Training data: tiles with label maps, from a folder of tiles or from whole-slide images.

Both kinds of source become *labelled images*: an RGB image read on demand at the training
resolution, plus a uint8 label canvas in memory at the resolution the model consumes labels
(``label_scale`` training pixels per label pixel: the codec's scale factor for an image
model, ``mask_downsample`` for a mask model). Label 0 means unknown/unlabelled: such pixels
train the unconditional branch of classifier-free guidance, which is how sparse annotations
are used.

* :class:`TileFileSource`: one image file and, optionally, its label mask (same size,
  one integer class per pixel); a tile without a mask is all label 0.
* :class:`SlideSource`: a whole-slide image read through OpenSlide at a chosen downsample,
  with optional QuPath GeoJSON annotations rasterised onto the label canvas; background is
  skipped with the tissue detector of :mod:`napari_diffinfinite.slide.tissue`.

:class:`TileDataset` lists candidate windows over all sources (on a half-tile grid,
filtered by tissue and labelled fractions) and draws one per item. Items are addressed by
*keys* (tuples of ints, see :func:`batch_keys`): the window, its jitter and the flip or
rotation are a pure function of the key, so a run resumed at step ``s`` sees exactly the
batches an uninterrupted run would have seen, whatever the number of data workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import MaskError, StoreError, TrainingError
from .augment import random_dihedral

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MASK_FOLDER = "masks"

# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class ConstantCondition:
    """Mask-model condition: the same class for every tile."""

    value: int = 0

    def __call__(self, labels: np.ndarray, rng: np.random.Generator) -> int:
        return self.value


@dataclass(frozen=True)
class TissueCondition:
    """Mask-model condition 1 ("tissue") for tissue-rich tiles, 0 ("any") for all tiles.

    A tile whose fraction of tissue labels (not 0 and not ``background``) is at least
    ``min_fraction`` is given condition 1 or 0 with equal probability; other tiles get 0.
    Condition 0 thus learns the layout of any tile and condition 1 that of tiles that are
    mostly tissue.
    """

    background: int
    min_fraction: float = 0.5

    def __call__(self, labels: np.ndarray, rng: np.random.Generator) -> int:
        tissue = float(((labels != 0) & (labels != self.background)).mean())
        return int(tissue >= self.min_fraction and rng.random() < 0.5)


ConditionRule = Callable[[np.ndarray, np.random.Generator], int]

# ----------------------------------------------------------------------------- sources


class LabelledImage:
    """An image read on demand plus its label canvas (see the module docstring).

    Subclasses set ``name``, ``shape`` (training pixels, (H, W)), ``label_scale``,
    ``labels`` (uint8 canvas of shape ``shape // label_scale``) and ``tissue`` (bool canvas
    of the same shape, or None when everything counts as tissue), and implement
    :meth:`read_image`.
    """

    name: str
    shape: tuple[int, int]
    label_scale: int
    labels: np.ndarray
    tissue: np.ndarray | None = None

    def read_image(self, y0: int, x0: int, size: int) -> np.ndarray:
        """(size, size, 3) uint8 training pixels with top-left corner (y0, x0)."""
        raise NotImplementedError


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TrainingError(
            f"cannot read tile {path} ({type(exc).__name__}: {exc}); save it as PNG, JPEG or TIFF"
        ) from exc


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TrainingError(
            f"cannot read tile {path} ({type(exc).__name__}: {exc}); save it as PNG, JPEG or TIFF"
        ) from exc
    return height, width


def _check_labels(labels: np.ndarray, num_labels: int, class_names: Sequence[str] | None, what: str) -> None:
    top = int(labels.max()) if labels.size else 0
    if top < num_labels:
        return
    counts = np.bincount(labels.ravel(), minlength=top + 1)
    bad = ", ".join(f"{v} ({counts[v]} px)" for v in range(num_labels, top + 1) if counts[v])
    if class_names:
        known = ", ".join(f"{i} = {n}" for i, n in enumerate(class_names[:num_labels]))
    else:
        known = f"0 (unknown) to {num_labels - 1}"
    raise TrainingError(
        f"{what} uses labels the model does not have: {bad}. The model's classes are {known}. "
        "Relabel those pixels (0 = unknown), or train a model with more classes (--classes)."
    )


class TileFileSource(LabelledImage):
    """One tile image file and its optional label mask (same size; none = all unknown)."""

    def __init__(
        self,
        path: str | os.PathLike,
        mask_path: str | os.PathLike | None,
        *,
        label_scale: int,
        num_labels: int,
        class_names: Sequence[str] | None = None,
    ) -> None:
        from ..slide.masks import load_label_image

        self.path = Path(path)
        self.name = self.path.name
        self.mask_path = Path(mask_path) if mask_path is not None else None
        self.label_scale = int(label_scale)
        self.shape = _image_size(self.path)
        h, w = self.shape
        if self.mask_path is None:
            self.labels = np.zeros((h // self.label_scale, w // self.label_scale), np.uint8)
        else:
            try:
                mask = load_label_image(self.mask_path)
            except MaskError as exc:
                raise TrainingError(f"mask of tile {self.path.name}: {exc}") from exc
            if mask.shape != (h, w):
                raise TrainingError(
                    f"mask {self.mask_path} is {mask.shape[1]}x{mask.shape[0]} px but its tile {self.path} is "
                    f"{w}x{h} px; a mask must have exactly its tile's size (one label per pixel)"
                )
            _check_labels(mask, num_labels, class_names, f"mask {self.mask_path}")
            # Nearest neighbour to the label resolution, as the official F.interpolate does.
            s = self.label_scale
            self.labels = np.ascontiguousarray(mask[: h - h % s : s, : w - w % s : s])

    def read_image(self, y0: int, x0: int, size: int) -> np.ndarray:
        rgb = _read_rgb(self.path)
        return np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size])


def find_tiles(folder: str | os.PathLike, masks: str | os.PathLike | None = None) -> list[tuple[Path, Path | None]]:
    """(tile, mask or None) pairs of a tiles folder.

    Tiles are the image files directly in ``folder``; a tile's mask is the file with the same
    stem in ``masks`` (default ``folder/masks``), in any image format. Masks without a tile
    are an error (a typo in a name would otherwise silently drop the annotation).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrainingError(f"tiles folder {folder} does not exist or is not a folder")
    mask_dir = Path(masks).expanduser() if masks is not None else folder / MASK_FOLDER
    if masks is not None and not mask_dir.is_dir():
        raise TrainingError(f"masks folder {mask_dir} does not exist or is not a folder")
    tiles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not tiles:
        raise TrainingError(
            f"no tiles found in {folder} (looked for {', '.join(IMAGE_SUFFIXES)} files directly in it); "
            f"put RGB tiles there and their label masks, with the same names, in {folder / MASK_FOLDER}"
        )
    mask_files: dict[str, Path] = {}
    if mask_dir.is_dir():
        for p in sorted(mask_dir.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                if p.stem in mask_files:
                    raise TrainingError(
                        f"two masks for tile {p.stem!r} in {mask_dir}: {mask_files[p.stem].name} and {p.name}"
                    )
                mask_files[p.stem] = p
    stems = {t.stem for t in tiles}
    orphans = sorted(set(mask_files) - stems)
    if orphans:
        raise TrainingError(
            f"masks without a tile in {mask_dir}: {', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}; "
            "a mask must have the same name (stem) as its tile"
        )
    return [(t, mask_files.get(t.stem)) for t in tiles]


def grid_origin(ratio: float) -> int:
    """Where a grid of ``ratio``-pixel boxes starts (pixels) so that JPEG's 8-px block borders
    fall inside boxes rather than between them.

    Scanners store levels as JPEG tiles whose 8 x 8 blocks (16 x 16 for subsampled colour)
    start at 0; box-downsampled by 2 or 4 from 0, every 4th or 2nd border of the result is a
    block border, and its gradients alternate by a few % with that period (measured on the
    demo slide at 4x: +-2 % at period 2): a texture of the codec that a model would be
    taught. Starting the boxes half a box later puts every block border mid-box, where it is
    averaged away (+-0.3 %). 0 where ``ratio`` is under 2.
    """
    return int(ratio // 2) if ratio >= 2 else 0


class SlideSource(LabelledImage):
    """A whole-slide image (OpenSlide) with optional QuPath GeoJSON annotations.

    ``downsample``: level-0 pixels per training pixel (2 turns a 0.5 um/px scan into 1 um/px).
    The label canvas has one pixel per ``label_scale`` training pixels; annotated areas get
    their class, everything else label 0 (unknown). The tissue canvas comes from the slide's
    tissue detector. Small slides (at most ``cache_megapixels`` at the training resolution)
    are read once and kept in memory; large ones are read tile by tile. The training grid
    starts at :func:`grid_origin` of the level it is read from (``origin``, level-0 px), and
    the labels and tissue canvases with it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        annotations: str | os.PathLike | None,
        *,
        class_names: Sequence[str],
        label_scale: int,
        downsample: float = 1.0,
        skip_unknown_classes: bool = False,
        tissue_max_side: int = 1024,
        cache_megapixels: float = 64.0,
    ) -> None:
        from ..slide.openslide_reader import open_real_slide
        from ..slide.tissue import tissue_mask

        self.path = Path(path).expanduser()
        self.name = self.path.name
        self.label_scale = int(label_scale)
        self.downsample = float(downsample)
        if self.downsample < 1:
            raise TrainingError(f"downsample must be at least 1 (level-0 pixels per training pixel), got {downsample}")
        self.cache_megapixels = cache_megapixels
        try:
            slide = open_real_slide(self.path)
        except StoreError as exc:
            raise TrainingError(f"cannot read slide {self.path}: {exc}") from exc
        try:
            self.level0_shape = slide.shape
            self.level_downsamples = list(slide.downsamples)
            self.level_shapes = list(slide.level_shapes)
            self.pixel_size_um = (
                None if slide.pixel_size_um is None else float(np.mean(slide.pixel_size_um)) * self.downsample
            )
            h0, w0 = self.level0_shape
            self.level = max(k for k, ds in enumerate(self.level_downsamples) if ds <= self.downsample + 1e-6)
            self.ratio = self.downsample / self.level_downsamples[self.level]  # level pixels per training pixel
            self.level_origin = grid_origin(self.ratio)
            self.origin = self.level_origin * float(self.level_downsamples[self.level])  # level-0 px
            self.shape = (int((h0 - self.origin) // self.downsample), int((w0 - self.origin) // self.downsample))
            canvas = (self.shape[0] // self.label_scale, self.shape[1] // self.label_scale)
            if min(canvas) < 1:
                raise TrainingError(f"slide {self.path} ({w0}x{h0} px) is too small for this model")
            try:
                detected = tissue_mask(slide, max_side=tissue_max_side)
            except Exception as exc:  # an unreadable tile deep in the file, a broken level, ...
                raise TrainingError(f"cannot read slide {self.path} to detect tissue: {exc}") from exc
        finally:
            slide.close()
        per_canvas = self.downsample * self.label_scale  # level-0 pixels per canvas pixel
        rows = np.minimum(
            ((self.origin + (np.arange(canvas[0]) + 0.5) * per_canvas) / detected.downsample[0]).astype(int),
            detected.mask.shape[0] - 1,
        )
        cols = np.minimum(
            ((self.origin + (np.arange(canvas[1]) + 0.5) * per_canvas) / detected.downsample[1]).astype(int),
            detected.mask.shape[1] - 1,
        )
        self.tissue = detected.mask[np.ix_(rows, cols)]
        self.tissue_threshold = detected.threshold
        self.annotations = Path(annotations).expanduser() if annotations is not None else None
        self.import_summary = "no annotations: every tile is unlabelled"
        if self.annotations is None:
            self.labels = np.zeros(canvas, np.uint8)
        else:
            from ..slide.geojson import geojson_to_labels

            # A virtual slide shape that is an exact multiple of the canvas keeps one canvas
            # pixel = per_canvas level-0 pixels (the remainder at the edges is not trained on).
            virtual = (max(1, round(canvas[0] * per_canvas)), max(1, round(canvas[1] * per_canvas)))
            try:
                imported = geojson_to_labels(
                    self.annotations,
                    class_names=list(class_names),
                    slide_shape=virtual,
                    canvas_shape=canvas,
                    on_unknown="skip" if skip_unknown_classes else "error",
                    origin=(self.origin, self.origin),
                )
            except MaskError as exc:
                raise TrainingError(f"annotations {self.annotations} of slide {self.name}: {exc}") from exc
            self.labels = imported.canvas
            self.import_summary = imported.summary()
        self._handle: Any = None
        self._pid: int | None = None
        self._cache: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_handle=None, _pid=None, _cache=None)  # reopened lazily in each worker
        return state

    def _slide(self):
        if self._handle is None or self._pid != os.getpid():
            from ..slide.openslide_reader import open_real_slide

            try:
                self._handle = open_real_slide(self.path)
            except StoreError as exc:
                raise TrainingError(f"cannot read slide {self.path}: {exc}") from exc
            self._pid = os.getpid()
            self._cache = None
        return self._handle

    def _read_scaled(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Training pixels [y0:y0+h, x0:x0+w] read from the best level and box-resized."""
        slide = self._slide()
        level, ratio, o = self.level, self.ratio, self.level_origin
        lh, lw = self.level_shapes[level]
        ly0, lx0 = o + int(round(y0 * ratio)), o + int(round(x0 * ratio))
        ly1, lx1 = min(lh, o + int(round((y0 + h) * ratio))), min(lw, o + int(round((x0 + w) * ratio)))
        try:
            region = slide.read_region(level, ly0, ly1, lx0, lx1)
        except Exception as exc:
            raise TrainingError(f"cannot read slide {self.path} at ({x0}, {y0}): {exc}") from exc
        if region.shape[:2] != (h, w):
            region = np.asarray(Image.fromarray(region).resize((w, h), Image.Resampling.BOX))
        return region

    def read_image(self, y0: int, x0: int, size: int) -> np.ndarray:
        if self._cache is None and self.shape[0] * self.shape[1] <= self.cache_megapixels * 1e6:
            self._slide()
            self._cache = self._read_scaled(0, 0, *self.shape)
        if self._cache is not None:
            return np.ascontiguousarray(self._cache[y0 : y0 + size, x0 : x0 + size])
        return self._read_scaled(y0, x0, size, size)


# ----------------------------------------------------------------------------- dataset


def batch_keys(seed: int, step: int, batch_size: int, rank: int = 0) -> list[tuple[int, int, int, int]]:
    """The keys of the items of ``step`` on process ``rank``: a pure function of its arguments."""
    return [(seed, step, rank, i) for i in range(batch_size)]


def _window_starts(size: int, window: int, stride: int) -> np.ndarray:
    if size < window:
        return np.zeros(0, np.int64)
    starts = np.arange(0, size - window + 1, stride)
    if starts[-1] != size - window:
        starts = np.append(starts, size - window)
    return starts


@dataclass
class DatasetSummary:
    sources: int
    candidates: int
    labelled_candidates: int
    label_pixels: dict[int, int]

    def __str__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.label_pixels.items()))
        return (
            f"{self.sources} source(s), {self.candidates} candidate tiles "
            f"({self.labelled_candidates} with labels); label pixels {{{counts}}}"
        )


class TileDataset(torch.utils.data.Dataset):
    """Random training tiles from labelled images, addressed by keys.

    ``tile_size``: side of a tile in training pixels (the model's ``patch_size``, or
    ``patch_size * mask_downsample`` for a mask model); it must be a multiple of every
    source's ``label_scale``. ``with_images=False`` (mask models) reads no pixels.
    ``min_tissue``: the least fraction of a window on detected tissue (sources without a
    tissue canvas pass); ``min_labelled``: the least fraction of labelled (non-zero) label
    pixels. ``condition``: mask-model condition of a tile from its labels.

    An item is a dict: ``labels`` (h, w) int64 at label resolution, ``image`` (3, H, W)
    float32 in [0, 1] when ``with_images``, ``condition`` (int64 scalar).
    """

    def __init__(
        self,
        sources: Sequence[LabelledImage],
        *,
        tile_size: int,
        with_images: bool = True,
        augment: bool = True,
        min_tissue: float = 0.0,
        min_labelled: float = 0.0,
        condition: ConditionRule | None = None,
    ) -> None:
        if not sources:
            raise TrainingError("no training data: give a tiles folder (--tiles) or slides (--slide)")
        self.sources = list(sources)
        self.tile_size = int(tile_size)
        self.with_images = with_images
        self.augment = augment
        self.condition = condition or ConstantCondition(0)
        tables = []
        too_small = []
        for index, source in enumerate(self.sources):
            s = source.label_scale
            if self.tile_size % s:
                raise TrainingError(f"tile size {self.tile_size} is not a multiple of the label scale {s}")
            n = self.tile_size // s
            ch, cw = source.labels.shape
            ys, xs = _window_starts(ch, n, max(1, n // 2)), _window_starts(cw, n, max(1, n // 2))
            if len(ys) == 0 or len(xs) == 0:
                too_small.append(f"{source.name} ({source.shape[1]}x{source.shape[0]} px)")
                continue
            yy, xx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
            keep = np.ones(len(yy), bool)
            labelled = _window_fraction(source.labels > 0, yy, xx, n)
            if source.tissue is not None and min_tissue > 0:
                keep &= _window_fraction(source.tissue, yy, xx, n) >= min_tissue
            if min_labelled > 0:
                keep &= labelled >= min_labelled
            tables.append(np.stack([np.full(keep.sum(), index), yy[keep], xx[keep], labelled[keep] > 0], axis=1))
        if too_small and len(too_small) == len(self.sources):
            raise TrainingError(
                f"every image is smaller than one training tile of {self.tile_size} px: {', '.join(too_small[:5])}; "
                "use larger tiles or a smaller --patch-size"
            )
        self.candidates = np.concatenate(tables) if tables else np.zeros((0, 4), np.int64)
        if len(self.candidates) == 0:
            reasons = []
            if min_tissue > 0:
                reasons.append(f"at least {min_tissue:.0%} tissue (--min-tissue)")
            if min_labelled > 0:
                reasons.append(f"at least {min_labelled:.0%} labelled pixels (--min-labelled)")
            raise TrainingError(
                f"no training tile of {self.tile_size} px has {' and '.join(reasons) or 'room in the images'}; "
                "lower those thresholds, check that the annotations cover the slides, or use smaller tiles"
            )
        self.too_small = too_small

    def __len__(self) -> int:
        return len(self.candidates)

    def summary(self) -> DatasetSummary:
        counts: dict[int, int] = {}
        for source in self.sources:
            for value, count in enumerate(np.bincount(source.labels.ravel())):
                if count:
                    counts[value] = counts.get(value, 0) + int(count)
        return DatasetSummary(len(self.sources), len(self.candidates), int(self.candidates[:, 3].sum()), counts)

    def window(self, key: Sequence[int] | int) -> tuple[LabelledImage, int, int, np.random.Generator]:
        """The source and top-left label-canvas corner of the item ``key`` (and its RNG)."""
        rng = np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in np.atleast_1d(key)]))
        index, y, x, _ = self.candidates[rng.integers(len(self.candidates))]
        source = self.sources[int(index)]
        n = self.tile_size // source.label_scale
        ch, cw = source.labels.shape
        jitter = max(1, n // 2)
        y = int(min(y + rng.integers(jitter), ch - n))
        x = int(min(x + rng.integers(jitter), cw - n))
        return source, y, x, rng

    def __getitem__(self, key: Sequence[int] | int) -> dict[str, torch.Tensor]:
        source, y, x, rng = self.window(key)
        n = self.tile_size // source.label_scale
        labels = source.labels[y : y + n, x : x + n]
        s = source.label_scale
        if self.with_images:
            image = source.read_image(y * s, x * s, self.tile_size)
        else:
            image = np.zeros((1, 1, 3), np.uint8)
        if self.augment:
            if self.with_images:
                image, labels = random_dihedral(image, labels, rng)
            else:
                _, labels = random_dihedral(np.zeros((n, n, 1), np.uint8), labels, rng)
        item = {
            "labels": torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64)),
            "condition": torch.tensor(int(self.condition(labels, rng)), dtype=torch.int64),
        }
        if self.with_images:
            item["image"] = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        return item

    def batch(self, keys: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """The collated items of ``keys`` (no DataLoader)."""
        return torch.utils.data.default_collate([self[k] for k in keys])


def _window_fraction(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, n: int) -> np.ndarray:
    """Fraction of True pixels of ``mask`` in the n x n windows at (ys, xs), via an integral image."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    total = integral[ys + n, xs + n] - integral[ys, xs + n] - integral[ys + n, xs] + integral[ys, xs]
    return total / float(n * n)


# ----------------------------------------------------------------------------- builders


def tile_folder_sources(
    folder: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    label_scale: int,
    num_labels: int,
    class_names: Sequence[str] | None = None,
) -> list[TileFileSource]:
    """A :class:`TileFileSource` per tile of ``folder`` (see :func:`find_tiles`)."""
    return [
        TileFileSource(tile, mask, label_scale=label_scale, num_labels=num_labels, class_names=class_names)
        for tile, mask in find_tiles(folder, masks)
    ]


def slide_downsample(path: str | os.PathLike, pixel_size_um: float) -> float:
    """Level-0 pixels per training pixel to read ``path`` at ``pixel_size_um``.

    Snaps to an integer when within 2 % of one (0.499 um/px -> 1 um/px is 2x), so that
    reading is an exact box filter.
    """
    from ..slide.openslide_reader import open_real_slide

    try:
        with open_real_slide(path) as slide:
            mpp = slide.pixel_size_um
    except StoreError as exc:
        raise TrainingError(f"cannot read slide {path}: {exc}") from exc
    if mpp is None:
        raise TrainingError(
            f"slide {path} does not record its pixel size, so --pixel-size-um cannot be used; "
            "give --downsample (level-0 pixels per training pixel) instead"
        )
    d = pixel_size_um / float(np.mean(mpp))
    if d < 1 - 0.02:
        raise TrainingError(
            f"slide {path} is scanned at {np.mean(mpp):.3f} um/px; it cannot be read at a finer {pixel_size_um} um/px"
        )
    nearest = round(d)
    return float(nearest) if nearest >= 1 and abs(d - nearest) <= 0.02 * nearest else max(1.0, d)


def default_annotations(slide: str | os.PathLike) -> Path | None:
    """``slide.geojson`` (or ``.json``) next to a slide, if present."""
    slide = Path(slide)
    for suffix in (".geojson", ".json"):
        candidate = slide.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def pixel_size_of(sources: Sequence[LabelledImage]) -> float | None:
    """The training pixel size of slide sources (None for tiles or unknown)."""
    sizes = [s.pixel_size_um for s in sources if isinstance(s, SlideSource) and s.pixel_size_um]
    return float(np.mean(sizes)) if sizes else None


__all__ = [
    "ConstantCondition",
    "TissueCondition",
    "LabelledImage",
    "TileFileSource",
    "SlideSource",
    "TileDataset",
    "batch_keys",
    "find_tiles",
    "tile_folder_sources",
    "grid_origin",
    "slide_downsample",
    "default_annotations",
    "pixel_size_of",
]
