"""The slide store: one OME-Zarr image (NGFF 0.4, zarr format 2) per synthetic slide.

Layout::

    slide.zarr/                    RGB multiscale image, axes (c, y, x), uint8, chunks (3, 512, 512),
                                   bioformats2raw.layout 3
    slide.zarr/labels/tissue/      uint8 multiscale label image, axes (y, x), image-label metadata
    slide.zarr/OME/METADATA.ome.xml   channels Red/Green/Blue and the pixel size, for QuPath 0.6
    slide.zarr/diffinfinite/       plain files, not zarr: the writer lock, the label canvas
                                   (canvas.npy) and, while the slide is being generated, the
                                   sampler state for resume (state.json + state_0/ or state_1/)

The store is already the export format, so other tools (ome-zarr-py, QuPath, napari) read it
as it is being written. Root attribute ``diffinfinite`` holds the provenance, always with
``synthetic: true`` so a generated slide cannot pass for a patient's. The resume state is kept
as ``.npy`` files rather than zarr arrays because QuPath's reader lists every zarr array of a
store as an image (a float latent would show up as one); :meth:`SlideStore.mark_complete`
removes it unless asked to keep it, so a finished store is image + labels + metadata.

Atomicity of chunk writes: zarr 3.1's ``LocalStore`` writes every key (chunks and metadata
alike) to ``<key>.<uuid>.partial`` in the same folder and then ``Path.replace``s it onto the
final name (``zarr/storage/_local.py: _atomic_write``). A reader therefore sees either the old
or the new chunk, never a half-written one under its final name. It does not fsync, so this
protects against a crashed process, not against power loss; a crash can leave a stray
``*.partial`` file behind, which zarr ignores for data but lists as an unknown object.

Concurrency: one writer per store, enforced across processes by a lock file (see
:mod:`.lock`); a second writer is refused with a message naming the first. Writes through one
:class:`SlideStore` are serialised by a thread lock, because upper pyramid levels are
read-modify-written; any number of readers may read while it writes.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from .. import __version__
from ..errors import StoreError
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from . import ngff
from .constants import LABEL_NAME, LOCK_FILE, NGFF_VERSION, PROVENANCE_KEY, SOFTWARE, STATE_DIR, TILE
from .lock import WriterLock
from .masks import MaskSource
from .ownership import check_replaceable_store, links_inside, remove_store_contents
from .pyramid import level_shapes, write_tile_levels

__all__ = ["SlideStore", "NGFF_VERSION", "LABEL_NAME", "STATE_DIR", "PROVENANCE_KEY"]

log = logging.getLogger(__name__)

_STATE_SLOTS = ("state_0", "state_1")
_STATE_POINTER = "state.json"
_CANVAS = "canvas.npy"
_STATE_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _jsonable(value: Any, where: str) -> Any:
    """Turn ``value`` into plain JSON types (tuples become lists), or raise StoreError."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise StoreError(
        f"{where}: cannot store a {type(value).__name__} ({value!r}) in the slide's JSON "
        f"metadata; pass numbers, strings, lists or dicts"
    )


def _check_classes(
    class_names: list[str], class_colors: list[tuple[int, int, int]]
) -> tuple[list[str], list[tuple[int, int, int]]]:
    names = [str(n) for n in class_names]
    colors = [tuple(int(v) for v in c) for c in class_colors]
    if len(names) != len(colors):
        raise StoreError(f"got {len(names)} class names but {len(colors)} class colours; give one colour per class")
    if not 1 <= len(names) <= 256:
        raise StoreError(f"a slide needs 1 to 256 classes (label 0 = unknown), got {len(names)}")
    for name, color in zip(names, colors):
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise StoreError(f"class {name!r} has colour {color}; colours are (r, g, b) in 0..255")
    return names, colors  # type: ignore[return-value]


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so a pointer never outlives its data."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a flushed temporary file renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)


#: of the available memory, at most this share may go to one in-memory read of a store
READ_MEMORY_SHARE = 0.5


def check_read_fits(nbytes: int, what: str) -> None:
    """Refuse a read of ``nbytes`` that would not fit in memory, with one clear message.

    Stores come from anywhere: a 60000 x 60000 px level without a pyramid (or metadata that
    claims one) must end in this message, not in the system running out of memory."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > READ_MEMORY_SHARE * available:
        raise StoreError(
            f"reading {what} needs {nbytes / 2**30:.1f} GiB, more than half the free memory "
            f"({available / 2**30:.1f} GiB): use a smaller region, or a store with a pyramid of smaller levels"
        )


#: a chunk larger than this is not one this tool (or a viewer) can read tile by tile
MAX_CHUNK_BYTES = 256 * 2**20


def _check_array(path: Any, what: str, array: Any) -> None:
    """One StoreError for a level this tool cannot read as an 8-bit image in bounded memory
    (a float64 image, chunks of gigabytes, a negative shape in hand-edited metadata)."""
    if array.dtype != np.uint8:
        raise StoreError(f"{path}: {what} is {array.dtype}, not 8-bit (uint8) like a slide's RGB or labels")
    chunk_bytes = int(np.prod([int(c) for c in array.chunks], dtype=np.int64))
    if any(int(n) < 0 for n in array.shape) or chunk_bytes > MAX_CHUNK_BYTES:
        raise StoreError(
            f"{path}: {what} has shape {tuple(array.shape)} and chunks {tuple(array.chunks)}; a slide's chunks "
            f"are at most {MAX_CHUNK_BYTES >> 20} MiB: rewrite it with smaller chunks"
        )


def _load_state_array(file: Path, spec: Any) -> np.ndarray:
    """One state array, after its header was checked against the pointer's spec and the file's
    size: a header claiming terabytes must not be allocated before anything is compared."""
    with open(file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:  # np.save writes 1.0 (2.0 for huge headers)
            raise ValueError(f"{file.name} is a .npy file of version {version}, not one this tool writes")
        shape, _fortran, dtype = readers[version](fh)
        data_start = fh.tell()
    if dtype != np.dtype(spec["dtype"]) or list(shape) != list(spec["shape"]):
        raise ValueError(f"{file.name} is {dtype} {tuple(shape)}, expected {spec}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if file.stat().st_size - data_start != nbytes:
        raise ValueError(
            f"{file.name} holds {file.stat().st_size - data_start} bytes of data, its header claims {nbytes}"
        )
    return np.load(file, allow_pickle=False)


def _axis_names(multiscale: dict[str, Any]) -> list[str]:
    return [a["name"] if isinstance(a, dict) else str(a) for a in multiscale.get("axes", [])]


class SlideStore:
    """An OME-Zarr slide on disk: image pyramid, label pyramid, provenance and resume state.

    Use :meth:`create` or :meth:`open`; the constructor only wraps an already opened group.
    """

    path: Path
    shape: tuple[int, int]
    level_shapes: list[tuple[int, int]]
    num_levels: int
    tile: int
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    pixel_size_um: float | None

    def __init__(self, path: Path, root: zarr.Group, mode: str, writer_lock: WriterLock | None = None) -> None:
        self.path = Path(path)
        self._root = root
        self._mode = mode
        self._lock = threading.Lock()
        self._writer_lock = writer_lock
        attrs = root.attrs.asdict()
        multiscales = ngff.ngff_attrs(attrs).get("multiscales")
        if not multiscales or not isinstance(multiscales, list):
            raise StoreError(f"{path} is not a slide store: no OME-Zarr multiscales metadata")
        multiscale = multiscales[0]
        axes = _axis_names(multiscale)
        if axes != ["c", "y", "x"]:
            raise StoreError(
                f"{path} is an OME-Zarr image with axes {axes}; a slide is an RGB image with axes ['c', 'y', 'x']"
            )
        try:
            self._images = [root[d["path"]] for d in multiscale["datasets"]]
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{path}: multiscales lists a missing level ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - zarr's errors for metadata it cannot read (bad dtype, filters)
            raise StoreError(f"{path}: a level's zarr metadata cannot be read ({str(exc)[:200]})") from None
        if any(not isinstance(a, zarr.Array) or a.ndim != 3 or a.shape[0] != 3 for a in self._images):
            shapes = [getattr(a, "shape", None) for a in self._images]
            raise StoreError(f"{path} is not an RGB slide: its levels have shapes {shapes}, not (3, h, w)")
        for k, a in enumerate(self._images):
            _check_array(path, f"level {k}", a)
        self.level_shapes = [tuple(int(v) for v in a.shape[1:]) for a in self._images]
        self.shape = self.level_shapes[0]
        self.num_levels = len(self._images)
        self.tile = int(self._images[0].chunks[-1])

        self._labels = self._open_labels(root)
        provenance = attrs.get(PROVENANCE_KEY)
        self._ours = isinstance(provenance, dict)
        if self._labels is not None:
            for k, a in enumerate(self._labels):
                _check_array(path, f"label level {k}", a)
            label_shapes = [tuple(int(v) for v in a.shape) for a in self._labels]
            if label_shapes != self.level_shapes:  # what readers index (and allocate) by the image's levels
                if self._ours:
                    raise StoreError(
                        f"{path}: the label levels {label_shapes[:4]} do not match the image levels "
                        f"{self.level_shapes[:4]}; the store is damaged: regenerate or copy it again"
                    )
                log.warning("%s: its label levels do not match its image levels; the labels are not used", path)
                self._labels = None
        if mode == "r+" and not self._ours:
            raise StoreError(
                f"{path} was not written by napari-diffinfinite (no {PROVENANCE_KEY!r} provenance); open it read-only"
            )
        provenance = _checked_provenance(path, provenance) if self._ours else {}
        label_meta = self._label_metadata(root)
        names = provenance.get("class_names") or [
            p.get("class", str(p.get("label-value"))) for p in label_meta.get("properties", [])
        ]
        colors = provenance.get("class_colors") or [c.get("rgba", [0, 0, 0])[:3] for c in label_meta.get("colors", [])]
        self.class_names = [str(n) for n in names]
        self.class_colors = [tuple(int(v) for v in c) for c in colors]  # type: ignore[misc]
        if "pixel_size_um" in provenance:
            self.pixel_size_um = provenance["pixel_size_um"]
        else:
            self.pixel_size_um = self._pixel_size_from(multiscale)

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _pixel_size_from(multiscale: dict[str, Any]) -> float | None:
        axes = multiscale.get("axes", [])
        if not all(isinstance(a, dict) and a.get("unit") == "micrometer" for a in axes[-2:]):
            return None
        for transform in multiscale["datasets"][0].get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                return float(transform["scale"][-1])
        return None

    @staticmethod
    def _label_metadata(root: zarr.Group) -> dict[str, Any]:
        try:
            return ngff.ngff_attrs(root[f"labels/{LABEL_NAME}"].attrs.asdict()).get("image-label", {})
        except KeyError:
            return {}

    @staticmethod
    def _open_labels(root: zarr.Group) -> list[zarr.Array] | None:
        try:
            group = root[f"labels/{LABEL_NAME}"]
        except KeyError:
            return None
        multiscales = ngff.ngff_attrs(group.attrs.asdict()).get("multiscales")
        if not multiscales:
            return None
        try:
            return [group[d["path"]] for d in multiscales[0]["datasets"]]
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable label level
            raise StoreError(f"the label image {LABEL_NAME!r} cannot be read ({str(exc)[:200]})") from None

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shape: tuple[int, int],
        *,
        class_names: list[str],
        class_colors: list[tuple[int, int, int]],
        pixel_size_um: float | None = None,
        provenance: dict,
        overwrite: bool = False,
        tile: int = TILE,
    ) -> SlideStore:
        """Create an empty slide store of ``shape`` (H, W) px at ``path`` and open it "r+".

        The new store holds the writer lock until :meth:`close` or :meth:`mark_complete` (use it
        as a context manager). Raises StoreError if ``path`` exists (unless ``overwrite``, which
        replaces only an empty folder or a slide store made by this tool, see
        :mod:`.ownership`), if another process is writing it, if its parent folder is missing
        or unwritable, or if the slide is too large.
        """
        path = Path(path).expanduser().absolute()
        shapes = level_shapes(shape, tile)
        if tile % 2 ** (len(shapes) - 1):
            raise StoreError(
                f"tile size {tile} must be divisible by 2**{len(shapes) - 1} for a "
                f"{len(shapes)}-level pyramid; use a tile size of {TILE}"
            )
        names, colors = _check_classes(class_names, class_colors)
        if pixel_size_um is not None and not pixel_size_um > 0:
            raise StoreError(f"the pixel size must be positive (micrometres), got {pixel_size_um}")
        record = {
            **_jsonable(dict(provenance), "provenance"),
            "synthetic": True,
            "software": SOFTWARE,
            "version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "class_names": names,
            "class_colors": [list(c) for c in colors],
            "pixel_size_um": pixel_size_um,
            "complete": False,
        }
        existed = path.exists() or path.is_symlink()
        if existed:
            if not overwrite:
                raise StoreError(f"{path} already exists; use --resume to continue it or --overwrite to replace it")
            check_replaceable_store(path)
        else:
            parent = path.parent
            if not parent.is_dir():
                raise StoreError(f"cannot create {path}: the folder {parent} does not exist; create it first")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StoreError(f"cannot create {path}: no permission to write in {parent}")
            try:
                os.mkdir(path)
            except FileExistsError:
                raise StoreError(
                    f"{path} was created by another process just now; choose another output path"
                ) from None
            except OSError as exc:
                raise StoreError(f"cannot create the slide store {path}: {exc.strerror or exc}") from exc
        lock_path = path / STATE_DIR / LOCK_FILE
        try:
            writer_lock = WriterLock(path, lock_path).acquire()
        except BaseException:
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            raise
        try:
            if existed:
                check_replaceable_store(path)  # again, now that no other writer can change it
                remove_store_contents(path, keep=lock_path)
            root = zarr.open_group(store=LocalStore(path), mode="a", zarr_format=2)  # holds only our lock file
            cls._create_arrays(root, shapes, tile)
            name = f"synthetic slide ({path.name})"
            ngff.write_label_metadata(
                root, version=NGFF_VERSION, num_levels=len(shapes), pixel_size_um=pixel_size_um,
                class_names=names, class_colors=colors,
            )  # fmt: skip
            ngff.write_ome_xml(
                root, path, version=NGFF_VERSION, name=name, shape=shapes[0], pixel_size_um=pixel_size_um
            )
            # Root metadata last: a store that has "multiscales" has all its arrays.
            ngff.write_image_metadata(
                root, version=NGFF_VERSION, name=name, num_levels=len(shapes), pixel_size_um=pixel_size_um,
                extra={PROVENANCE_KEY: record},
            )  # fmt: skip
        except BaseException as exc:
            # Ours to remove: the folder did not exist, or was our own store being replaced.
            remove_store_contents(path, keep=lock_path)
            writer_lock.release()
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot create the slide store {path}: {exc}") from exc
            raise
        return cls(path, root, "r+", writer_lock)

    @staticmethod
    def _create_arrays(root: zarr.Group, shapes: list[tuple[int, int]], tile: int) -> None:
        tissue = root.create_group("labels").create_group(LABEL_NAME)
        # Every written image tile leaves a chunk file, even an all-black one.
        ngff.create_level_arrays(root, shapes, rgb=True, zarr_format=2, tile=tile, write_empty_chunks=True)
        ngff.create_level_arrays(tissue, shapes, rgb=False, zarr_format=2, tile=tile)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> SlideStore:
        """Open an existing slide store, read-only ("r") or for writing ("r+").

        Any OME-Zarr RGB image with axes (c, y, x) opens read-only, including stores written
        by other tools; writing needs a store created by :meth:`create`, and takes the writer
        lock (refused while another process writes the store) until :meth:`close`.
        """
        if mode not in ("r", "r+"):
            raise StoreError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no slide store at {path}: the path does not exist")
        if not path.is_dir():
            raise StoreError(f"{path} is not a slide store: it is a file, not an OME-Zarr folder")
        try:
            root = zarr.open_group(store=LocalStore(path, read_only=mode == "r"), mode=mode)
        except Exception as exc:  # zarr raises several kinds for "no group here"
            raise StoreError(f"{path} is not a slide store: no OME-Zarr multiscales metadata ({exc})") from exc
        if mode == "r":
            return cls(path, root, mode)
        cls(path, root, "r")  # refuse a foreign store before touching it
        found = ["the store folder itself"] if path.is_symlink() else links_inside(path)[:5]
        if found:  # writes would go through a link to wherever it points (a store from elsewhere can hold one)
            raise StoreError(
                f"{path} holds symbolic links ({', '.join(found)}); a store is written only when it holds none, "
                "so that nothing outside it is written: copy it without links (cp -rL) and resume the copy"
            )
        writer_lock = WriterLock(path, path / STATE_DIR / LOCK_FILE).acquire()
        try:
            return cls(path, root, mode, writer_lock)
        except BaseException:
            writer_lock.release()
            raise

    # -- reading ---------------------------------------------------------------------------

    def _check_level(self, k: int) -> None:
        if not 0 <= k < self.num_levels:
            raise StoreError(f"level {k} does not exist: {self.path} has levels 0..{self.num_levels - 1}")

    def image_level(self, k: int) -> zarr.Array:
        """The (3, h, w) uint8 image array of pyramid level ``k`` (0 = full resolution)."""
        self._check_level(k)
        return self._images[k]

    def label_level(self, k: int) -> zarr.Array:
        """The (h, w) uint8 tissue-label array of pyramid level ``k``."""
        self._check_level(k)
        if self._labels is None:
            raise StoreError(f"{self.path} has no {LABEL_NAME!r} label image")
        return self._labels[k]

    def read_region(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) uint8 pixels of ``level``; the region must lie in the level."""
        self._check_level(level)
        h, w = self.level_shapes[level]
        if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
            raise StoreError(f"region y {y0}:{y1}, x {x0}:{x1} is outside level {level} ({h} x {w} px)")
        check_read_fits((y1 - y0) * (x1 - x0) * 3 * 2, f"{y1 - y0} x {x1 - x0} px of level {level} of {self.path}")
        return np.ascontiguousarray(np.moveaxis(self._images[level][:, y0:y1, x0:x1], 0, -1))

    @property
    def provenance(self) -> dict:
        """Root attribute "diffinfinite", read afresh (another process may be writing)."""
        return dict(self._fresh_root().attrs.get(PROVENANCE_KEY) or {})

    def _fresh_root(self) -> zarr.Group:
        return zarr.open_group(store=self._root.store, mode="r")

    # -- writing ---------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self._mode != "r+":
            raise StoreError(f"{self.path} is open read-only; open it with mode='r+' to write")

    def write_tile(self, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write a level-0 tile at (y0, x0) and its block-mean downsample into every level.

        ``rgb`` is (3, th, tw) uint8 with th = tw = the tile size except at the bottom/right
        edge; y0 and x0 are multiples of the tile size. Level k gets
        ``downsample_image(rgb, 2**k)`` at (y0 >> k, x0 >> k), so each level fills in as its
        tiles land and always equals the downsample of level 0.
        """
        h, w = self.shape
        self._write_from_level(0, y0, x0, rgb, f"the {h} x {w} px slide")

    def write_level_tile(self, level: int, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write a tile of pyramid level ``level`` (and its downsamples into the levels below it).

        For images made at a lower magnification first (a cascade's lower levels): the viewer
        shows them until level 0 is written, whose :meth:`write_tile` then replaces every level
        with the downsample of level 0. ``y0``, ``x0`` are multiples of the tile size in the
        level's own pixels; ``rgb`` is (3, th, tw) uint8, cut at the level's bottom/right edge.
        """
        self._require_writable()
        self._check_level(level)
        h, w = self.level_shapes[level]
        self._write_from_level(level, y0, x0, rgb, f"level {level} ({h} x {w} px)")

    def _write_from_level(self, level: int, y0: int, x0: int, rgb: np.ndarray, where: str) -> None:
        """Check a tile of level ``level`` and write it and its downsamples into that level and those below."""
        self._require_writable()
        rgb = np.asarray(rgb)
        t = self.tile
        h, w = self.level_shapes[level]
        if y0 % t or x0 % t or not (0 <= y0 < h and 0 <= x0 < w):
            raise StoreError(f"tile origin ({y0}, {x0}) must be a multiple of {t} inside {where}")
        expected = (3, min(t, h - y0), min(t, w - x0))
        if rgb.dtype != np.uint8 or rgb.shape != expected:
            raise StoreError(f"the tile at ({y0}, {x0}) must be uint8 of shape {expected}, got {rgb.dtype} {rgb.shape}")
        with self._lock:
            write_tile_levels(self._images[level:], y0, x0, rgb)

    def write_labels(
        self,
        mask: MaskSource,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Fill the tissue-label pyramid from ``mask``, one chunk at a time.

        Level k chunk pixels come from ``mask.region(..., step=2**k)``, i.e. level k is
        ``downsample_labels(level0, 2**k)``; memory stays at one chunk. Reports stage "pyramid".
        """
        self._require_writable()
        if self._labels is None:
            raise StoreError(f"{self.path} has no {LABEL_NAME!r} label image")
        if tuple(mask.shape) != self.shape:
            raise StoreError(f"the mask covers {tuple(mask.shape)} px but the slide is {self.shape} px")
        t = self.tile
        grid = [(k, h, w) for k, (h, w) in enumerate(self.level_shapes)]
        total = sum(-(-h // t) * -(-w // t) for _, h, w in grid)
        done = 0
        report(progress, ProgressEvent("pyramid", 0, total, "writing tissue labels"))
        for k, h, w in grid:
            s = 1 << k
            for cy in range(0, h, t):
                for cx in range(0, w, t):
                    check(cancel)
                    bh, bw = min(t, h - cy), min(t, w - cx)
                    block = mask.region(cy * s, (cy + bh) * s, cx * s, (cx + bw) * s, step=s)
                    if block.shape != (bh, bw):
                        raise StoreError(f"{type(mask).__name__}.region returned {block.shape}, expected {(bh, bw)}")
                    with self._lock:
                        self._labels[k][cy : cy + bh, cx : cx + bw] = block.astype(np.uint8, copy=False)
                    done += 1
                    report(progress, ProgressEvent("pyramid", done, total, f"labels level {k}"))

    def update_provenance(self, **values: Any) -> None:
        """Merge ``values`` into the provenance record. ``synthetic`` cannot be unset."""
        self._require_writable()
        if "synthetic" in values and values["synthetic"] is not True:
            raise StoreError("a generated slide stays marked synthetic: 'synthetic' cannot be changed")
        with self._lock:
            record = self.provenance
            record.update(_jsonable(values, "provenance"))
            # zarr rewrites the whole attribute file through its temp-file-and-rename write.
            self._root.attrs[PROVENANCE_KEY] = record

    def mark_complete(self, keep_state: bool = False) -> None:
        """Record that every tile and the label pyramid are written, and stop writing.

        The sampler state is deleted (a finished store is image + labels + metadata) unless
        ``keep_state``; the label canvas stays. The writer lock is released and the store
        becomes read-only.
        """
        self.update_provenance(complete=True)
        if not keep_state:
            with self._lock:
                self._remove_state()
        self.close()

    # -- life cycle ------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True while this store is open for writing (and holds the writer lock)."""
        return self._mode == "r+"

    def close(self) -> None:
        """Release the writer lock (if held); the store stays readable. Safe to call twice."""
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None
        self._mode = "r"

    def __enter__(self) -> SlideStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resume state ----------------------------------------------------------------------
    # Plain files in STATE_DIR, never zarr arrays (see the module docstring).

    @property
    def _state_dir(self) -> Path:
        return self.path / STATE_DIR

    def _remove_state(self) -> None:
        (self._state_dir / _STATE_POINTER).unlink(missing_ok=True)
        for slot in _STATE_SLOTS:
            shutil.rmtree(self._state_dir / slot, ignore_errors=True)
        for leftover in self._state_dir.glob(f".{_STATE_POINTER}.tmp-*"):  # from a crashed save
            leftover.unlink(missing_ok=True)

    def save_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Save the sampler state atomically, replacing the previous one.

        Two slots (``state_0``, ``state_1``) alternate: the arrays go as ``.npy`` files into the
        slot that is not current, are flushed to disk, and only then does the pointer
        (``state.json``, replaced by rename) switch to it; the previous slot is then deleted. A
        crash at any point leaves the previous complete state loadable. ``meta`` must be JSON-like; tuples come back as lists.
        """
        self._require_writable()
        meta_json = _jsonable(meta, "state meta")
        spec: dict[str, dict[str, Any]] = {}
        for name, array in arrays.items():
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise StoreError(f"state array name {name!r} must be non-empty, without '/' or a leading '.'")
            array = np.asarray(array)
            if array.dtype.kind not in "biufc":
                raise StoreError(f"state array {name!r} has dtype {array.dtype}; only numeric arrays are saved")
            spec[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        with self._lock:
            pointer = self._read_pointer()
            slot = _STATE_SLOTS[1] if pointer and pointer.get("slot") == _STATE_SLOTS[0] else _STATE_SLOTS[0]
            folder = self._state_dir / slot
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name, array in arrays.items():
                np.save(folder / f"{name}.npy", np.asarray(array), allow_pickle=False)
            _fsync_tree(folder)
            record = {
                "slot": slot,
                "arrays": spec,
                "meta": meta_json,
                "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            self._commit_state_pointer(self._state_dir / _STATE_POINTER, record)
            # The previous state is no longer needed once the pointer names the new one: one slot on disk.
            other = _STATE_SLOTS[0] if slot == _STATE_SLOTS[1] else _STATE_SLOTS[1]
            shutil.rmtree(self._state_dir / other, ignore_errors=True)

    @staticmethod
    def _commit_state_pointer(path: Path, pointer: dict) -> None:
        # The single atomic step of save_state: state.json is replaced by rename.
        _replace_file(path, json.dumps(pointer).encode())

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            pointer = json.loads((self._state_dir / _STATE_POINTER).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"the resume state in {self.path} is damaged ({exc}); start again with --overwrite"
            ) from exc
        return pointer if isinstance(pointer, dict) else None

    def load_state(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The last state saved by :meth:`save_state` as (arrays, meta), or None if none was."""
        pointer = self._read_pointer()
        if not pointer:
            return None
        try:
            slot = pointer["slot"]
            if slot not in _STATE_SLOTS:  # the pointer names a folder: never anything but ours
                raise ValueError(f"the state slot is {str(slot)[:60]!r}, not one of {_STATE_SLOTS}")
            folder = self._state_dir / slot
            arrays = {}
            for name, spec in pointer["arrays"].items():
                if not isinstance(name, str) or not _STATE_ARRAY_NAME.match(name):
                    raise ValueError(f"the state array name {str(name)[:60]!r} is not a plain name")
                arrays[name] = _load_state_array(folder / f"{name}.npy", spec)
            meta = dict(pointer["meta"])
        except MemoryError as exc:
            raise StoreError(f"the resume state in {self.path} is larger than the free memory ({exc})") from exc
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise StoreError(
                f"the resume state in {self.path} is damaged ({exc}); start again with --overwrite"
            ) from exc
        return arrays, meta

    def save_canvas(self, canvas: np.ndarray) -> None:
        """Store the label canvas (uint8, canvas resolution) the slide is generated from."""
        self._require_writable()
        canvas = np.asarray(canvas)
        if canvas.dtype != np.uint8 or canvas.ndim != 2:
            raise StoreError(f"a label canvas is a 2-D uint8 array, got {canvas.dtype} {canvas.shape}")
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(canvas), allow_pickle=False)
        with self._lock:
            _replace_file(self._state_dir / _CANVAS, buffer.getvalue())

    def load_canvas(self) -> np.ndarray | None:
        """The label canvas saved by :meth:`save_canvas`, or None."""
        try:
            return np.load(self._state_dir / _CANVAS, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"the label canvas in {self.path} is damaged ({exc})") from exc

    def __repr__(self) -> str:
        return f"SlideStore({str(self.path)!r}, shape={self.shape}, levels={self.num_levels}, mode={self._mode!r})"


def _checked_provenance(path: Any, provenance: dict[str, Any]) -> dict[str, Any]:
    """The store's provenance, or one StoreError naming the field that cannot be what it claims.

    The fields read to show a slide (pixel size, class names and colours) come from a file that
    may have been edited or damaged: ``"class_colors": "red"`` used to surface as Python's
    ``invalid literal for int() with base 10: 'r'``.
    """

    def damaged(field: str, value: Any, expected: str) -> StoreError:
        return StoreError(
            f"{path}: provenance field {field!r} is {value!r:.60}, not {expected}; the store's metadata "
            f"(.zattrs / zarr.json, key {PROVENANCE_KEY!r}) is damaged: regenerate or copy the store again"
        )

    size = provenance.get("pixel_size_um")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size < 1e6):
        raise damaged("pixel_size_um", size, "a positive number of micrometres")
    names = provenance.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names)):
        raise damaged("class_names", names, "a list of names")
    colors = provenance.get("class_colors")
    if colors is not None and (
        not isinstance(colors, list)
        or not all(
            isinstance(c, list)
            and len(c) in (3, 4)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c)
            for c in colors
        )
    ):
        raise damaged("class_colors", colors, "a list of [r, g, b] colours")
    return provenance
