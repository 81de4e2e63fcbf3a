"""Reproducible tile sampling from slide stores, real slides and folders of tiles.

A *source* is one of:

* a slide store (``*.zarr`` written by this project; ``synthetic: true`` in its provenance),
* a real slide OpenSlide opens (``.svs``, ``.ndpi``, ``.mrxs``, pyramidal TIFF, ...),
* a folder of tile images (PNG, JPEG, TIFF), each file one tile.

:func:`sample_tiles` draws ``count`` tiles of ``size`` x ``size`` pixels at pyramid
``level`` from a list of sources, reproducibly for a given ``seed``:

* Slides are cut into a grid of non-overlapping candidate tiles (so no tile is counted
  twice). Unless ``include_glass`` is set, a candidate is kept only if at least
  ``min_tissue`` of it is tissue in the slide's low-resolution tissue mask
  (:func:`slide_tissue_mask`: not bright-and-colourless glass). Candidates are then
  drawn without replacement by a generator seeded with ``(seed, source index)``.
* Folder tiles are drawn without replacement; a file larger than ``size`` gives a crop at a
  seeded random position; a smaller one is refused.
* With several sources, the tiles are split evenly between them (the first sources take
  the remainder); a source with too few candidates gives what it has, and the shortfall is
  reported in :class:`TileSample`.

Slides are compared at one pixel size: :func:`match_pixel_size` shows each slide whose pixel
size is finer than the target through a :class:`ResampledSlideSource` (regions read at the
slide's own resolution and box-filtered down), so that a tile of 256 px covers the same
microns in a 0.5 um/px scan and a 2 um/px synthetic slide. A tile at a different pixel size
is a different image: Inception features of tissue at 4x the magnification are not
comparable, and every distance between the sets would measure the zoom, not the generator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .distances import EvaluationError

__all__ = [
    "TILE_SUFFIXES",
    "PIXEL_SIZE_TOLERANCE",
    "ResampledSlideSource",
    "SlideSource",
    "FolderSource",
    "TileRef",
    "TileSample",
    "open_source",
    "sample_tiles",
    "match_pixel_size",
    "slide_tissue_mask",
]

TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PIXEL_SIZE_TOLERANCE = 0.05  # pixel sizes within 5 % count as equal (scanners round mpp: 0.499, 0.5, 0.5034)


class SlideSource:
    """A slide (store or real) read region by region: ``read(level, y0, y1, x0, x1) -> (h, w, 3) uint8``."""

    def __init__(self, path: Path, slide, kind: str) -> None:
        self.path = path
        self.slide = slide
        self.kind = kind  # "store" | "slide"
        self.level_shapes: list[tuple[int, int]] = [tuple(s) for s in slide.level_shapes]
        self._tissue: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pixel_size_um(self) -> float | None:
        """Level-0 pixel size in microns, or None when the slide does not say."""
        size = getattr(self.slide, "pixel_size_um", None)
        if isinstance(size, (tuple, list)):  # OpenSlide's (mpp-x, mpp-y)
            size = float(np.mean(size))
        return None if size is None or not np.isfinite(size) or size <= 0 else float(size)

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.slide.read_region(level, y0, y1, x0, x1)

    def tissue(self) -> np.ndarray:
        """Boolean low-resolution tissue mask covering the whole slide (cached)."""
        if self._tissue is None:
            self._tissue = slide_tissue_mask(self.slide)
        return self._tissue

    def close(self) -> None:
        close = getattr(self.slide, "close", None)
        if close is not None and self.kind == "slide":
            close()


class ResampledSlideSource(SlideSource):
    """A slide shown at ``factor`` times its pixel size (``factor`` > 1: coarser).

    Level k has the slide's level-k shape divided by ``factor``; a region of it is read from
    the slide's level k (``factor`` times larger) and box-filtered to the asked size, so each
    pixel is the mean of the slide pixels it covers, as in the slide's own pyramid.
    """

    def __init__(self, source: SlideSource, factor: float) -> None:
        super().__init__(source.path, source.slide, source.kind)
        self.factor = float(factor)
        self.native_shapes = self.level_shapes
        self.level_shapes = [(max(1, int(h / factor)), max(1, int(w / factor))) for h, w in self.native_shapes]
        self._tissue = source._tissue

    @property
    def pixel_size_um(self) -> float | None:
        native = super().pixel_size_um
        return None if native is None else native * self.factor

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = self.native_shapes[level]
        f = self.factor
        ny0, nx0 = int(round(y0 * f)), int(round(x0 * f))
        ny1, nx1 = min(max(int(round(y1 * f)), ny0 + 1), h), min(max(int(round(x1 * f)), nx0 + 1), w)
        rgb = self.slide.read_region(level, ny0, ny1, nx0, nx1)
        return np.asarray(Image.fromarray(rgb).resize((x1 - x0, y1 - y0), Image.Resampling.BOX))


def match_pixel_size(
    sources: Sequence[SlideSource | FolderSource], target_um: float
) -> tuple[list[SlideSource | FolderSource], list[str]]:
    """The sources shown at ``target_um`` microns per pixel, and notes on what could not be.

    Slides finer than the target are resampled (:class:`ResampledSlideSource`); slides within
    ``PIXEL_SIZE_TOLERANCE`` of it are kept; a coarser slide is refused (upsampling would
    invent detail); slides that do not state their pixel size and folders of tiles are kept
    as they are, with a note.
    """
    out: list[SlideSource | FolderSource] = []
    notes: list[str] = []
    for source in sources:
        native = source.pixel_size_um if isinstance(source, SlideSource) else None
        if native is None:
            what = "tiles" if isinstance(source, FolderSource) else "slide"
            notes.append(f"{source.path}: {what} of unknown pixel size, taken as {target_um:g} um/px")
            out.append(source)
            continue
        factor = target_um / native
        if factor < 1 - PIXEL_SIZE_TOLERANCE:
            raise EvaluationError(
                f"{source.path} has {native:g} um/px, coarser than the {target_um:g} um/px to compare at; pass "
                f"--pixel-size {native:g} (or coarser)"
            )
        out.append(source if factor <= 1 + PIXEL_SIZE_TOLERANCE else ResampledSlideSource(source, factor))
    return out, notes


class FolderSource:
    """A folder of tile images, each file one tile."""

    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in TILE_SUFFIXES and p.is_file())
        if not self.files:
            raise EvaluationError(f"{path} holds no tile images ({', '.join(TILE_SUFFIXES)})")

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        pass


def slide_tissue_mask(slide, max_side: int = 1024) -> np.ndarray:
    """Tissue mask of a slide store or real slide at low resolution (longer side ``max_side``).

    Tissue is what is not glass by the fixed rule of :meth:`HESegmenter.glass` (bright and
    colourless). A fixed rule, not the adaptive threshold of :mod:`..slide.tissue`: a
    synthetic slide is often tissue from edge to edge, and an adaptive threshold would
    then split the tissue itself.
    """
    from ..slide.tissue import _low_resolution_rgb
    from .adherence import HESegmenter

    return ~HESegmenter().glass(_low_resolution_rgb(slide, max_side))


def open_source(path: str | os.PathLike) -> SlideSource | FolderSource:
    """Open a slide store, a real slide or a tile folder, whichever ``path`` is."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"{path} does not exist")
    if path.is_dir() and not ((path / ".zattrs").exists() or (path / "zarr.json").exists()):
        return FolderSource(path)
    if path.is_dir():
        from ..slide.store import SlideStore

        return SlideSource(path, SlideStore.open(path, mode="r"), "store")
    from ..slide.openslide_reader import open_real_slide

    return SlideSource(path, open_real_slide(path), "slide")


@dataclass(frozen=True)
class TileRef:
    """Where a tile comes from: source index, and (level, y, x) for slides or the file for folders."""

    source: int
    level: int
    y: int
    x: int
    size: int
    file: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TileSample:
    """The tiles drawn (``refs``), their sources, and how many were asked for."""

    sources: list[SlideSource | FolderSource]
    refs: list[TileRef]
    requested: int
    size: int
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)

    def read(self, ref: TileRef) -> np.ndarray:
        return read_tile(self.sources[ref.source], ref)

    def __iter__(self) -> Iterator[np.ndarray]:
        for ref in self.refs:
            yield self.read(ref)

    def describe(self) -> dict:
        return {
            "sources": [{"path": str(s.path), "kind": s.kind} for s in self.sources],
            "tiles": len(self.refs),
            "requested": self.requested,
            "tile_size": self.size,
            "notes": self.notes,
        }

    def close(self) -> None:
        for source in self.sources:
            source.close()


def _open_tile_image(file: Path) -> Image.Image:
    """A tile image opened lazily, or one EvaluationError for what PIL refuses or cannot read
    (a decompression bomb: a small file claiming gigapixels; a truncated or foreign file)."""
    try:
        return Image.open(file)
    except Image.DecompressionBombError as exc:
        raise EvaluationError(f"tile {file} claims {str(exc)[:120]}; tiles are small images, not slides") from None
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"tile {file} cannot be read as an image: {str(exc)[:200]}") from None


def read_tile(source: SlideSource | FolderSource, ref: TileRef) -> np.ndarray:
    """The (size, size, 3) uint8 pixels of a tile reference."""
    if isinstance(source, FolderSource):
        with _open_tile_image(source.path / ref.file) as image:
            rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[ref.y : ref.y + ref.size, ref.x : ref.x + ref.size])
    return source.read(ref.level, ref.y, ref.y + ref.size, ref.x, ref.x + ref.size)


def _slide_candidates(
    source: SlideSource,
    level: int,
    size: int,
    include_glass: bool,
    min_tissue: float,
    region: tuple[int, int, int, int] | None,
) -> list[tuple[int, int]]:
    if not 0 <= level < len(source.level_shapes):
        raise EvaluationError(f"{source.path} has pyramid levels 0..{len(source.level_shapes) - 1}, not {level}")
    h, w = source.level_shapes[level]
    h0, w0 = source.level_shapes[0]
    sy, sx = h0 / h, w0 / w
    ry0, ry1, rx0, rx1 = region if region else (0, h0, 0, w0)
    ys = np.arange(int(np.ceil(ry0 / sy)), int(ry1 / sy) - size + 1, size)
    xs = np.arange(int(np.ceil(rx0 / sx)), int(rx1 / sx) - size + 1, size)
    cells = [(int(y), int(x)) for y in ys for x in xs]
    if include_glass or not cells:
        return cells
    mask = source.tissue()
    my, mx = mask.shape[0] / h, mask.shape[1] / w  # mask pixels per level pixel
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    kept = []
    for y, x in cells:
        a0, a1 = int(y * my), max(int(np.ceil((y + size) * my)), int(y * my) + 1)
        b0, b1 = int(x * mx), max(int(np.ceil((x + size) * mx)), int(x * mx) + 1)
        a1, b1 = min(a1, mask.shape[0]), min(b1, mask.shape[1])
        total = (a1 - a0) * (b1 - b0)
        inside = integral[a1, b1] - integral[a0, b1] - integral[a1, b0] + integral[a0, b0]
        if total and inside / total >= min_tissue:
            kept.append((y, x))
    return kept


def _folder_refs(source: FolderSource, index: int, count: int, size: int, rng: np.random.Generator) -> list[TileRef]:
    order = rng.permutation(len(source.files))[:count]
    refs = []
    for i in order:
        file = source.files[i]
        with _open_tile_image(file) as image:
            w, h = image.size
        if h < size or w < size:
            raise EvaluationError(
                f"tile {file} is {w}x{h} px, smaller than the tile size {size}; pass a smaller --tile-size"
            )
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        refs.append(TileRef(index, 0, y, x, size, file.name))
    return refs


def sample_tiles(
    paths: Sequence[str | os.PathLike] | Sequence[SlideSource | FolderSource],
    count: int,
    *,
    size: int = 256,
    level: int = 0,
    seed: int = 0,
    include_glass: bool = False,
    min_tissue: float = 0.5,
    region: tuple[int, int, int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TileSample:
    """Draw ``count`` tiles reproducibly from the sources (see the module docstring).

    ``region`` = (y0, y1, x0, x1) in level-0 pixels restricts slide sources to a part of the slide.
    """
    if count < 1 or size < 8:
        raise EvaluationError(f"need at least 1 tile of at least 8 px, got {count} tiles of {size} px")
    if not paths:
        raise EvaluationError("no tile sources given")
    sources = [p if isinstance(p, (SlideSource, FolderSource)) else open_source(p) for p in paths]
    share = [count // len(sources) + (1 if i < count % len(sources) else 0) for i in range(len(sources))]
    refs: list[TileRef] = []
    notes: list[str] = []
    for i, (source, want) in enumerate(zip(sources, share)):
        rng = np.random.default_rng([seed, i])
        if isinstance(source, FolderSource):
            got = _folder_refs(source, i, want, size, rng)
        else:
            cells = _slide_candidates(source, level, size, include_glass, min_tissue, region)
            pick = rng.permutation(len(cells))[:want]
            got = [TileRef(i, level, *cells[j], size) for j in sorted(pick)]
        if len(got) < want:
            notes.append(
                f"{source.path}: {len(got)} of {want} tiles ({'files' if source.kind == 'folder' else 'tissue tiles'} "
                f"available at level {level}, {size} px)"
            )
        refs.extend(got)
        if progress is not None:
            progress(i + 1, len(sources))
    if not refs:
        raise EvaluationError(
            f"no {size} px tiles with at least {min_tissue:.0%} tissue in {[str(s.path) for s in sources]} "
            f"at level {level}; use a smaller --tile-size, a lower --level, or --include-glass"
        )
    return TileSample(sources=sources, refs=refs, requested=count, size=size, notes=notes)
