"""The slide store: one OME-Zarr image (NGFF 0.4, zarr format 2) per synthetic slide.

Layout::

    slide.zarr/                 RGB multiscale image, axes (c, y, x), uint8, chunks (3, 512, 512)
    slide.zarr/labels/tissue/   uint8 multiscale label image, axes (y, x), image-label metadata
    slide.zarr/diffinfinite/    sampler state for resume (double-buffered) and the label canvas

The store is already the export format, so other tools (ome-zarr-py, QuPath, napari) read it
as it is being written. Root attribute ``diffinfinite`` holds the provenance, always with
``synthetic: true`` so a generated slide cannot pass for a patient's.

Atomicity of chunk writes: zarr 3.1's ``LocalStore`` writes every key (chunks and metadata
alike) to ``<key>.<uuid>.partial`` in the same folder and then ``Path.replace``s it onto the
final name (``zarr/storage/_local.py: _atomic_write``). A reader therefore sees either the old
or the new chunk, never a half-written one under its final name. It does not fsync, so this
protects against a crashed process, not against power loss; a crash can leave a stray
``*.partial`` file behind, which zarr ignores for data but lists as an unknown object.

Concurrency: one writer per store. Writes through one :class:`SlideStore` are serialised by a
lock, because upper pyramid levels are read-modify-written; any number of readers may read
while it writes.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from .. import __version__
from ..errors import StoreError
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from . import ngff
from .masks import MaskSource
from .pyramid import image_levels, level_shapes

NGFF_VERSION = "0.4"
LABEL_NAME = "tissue"
STATE_GROUP = "diffinfinite"
PROVENANCE_KEY = "diffinfinite"
_STATE_SLOTS = ("state_0", "state_1")
_V2_KEYS = {"name": "v2", "separator": "/"}  # NGFF 0.4 uses "/"-separated chunk keys


def _image_compressor() -> numcodecs.abc.Codec:
    return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


def _state_compressor() -> numcodecs.abc.Codec:
    # Latents are noisy floats: compression buys little, so favour speed.
    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)


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


def _multiscale(
    name: str, num_levels: int, pixel_size_um: float | None, channel: bool, method: str
) -> dict[str, Any]:
    return {
        "version": NGFF_VERSION,
        "name": name,
        "axes": ngff.axes(pixel_size_um, channel),
        "datasets": ngff.datasets(num_levels, pixel_size_um, channel),
        "type": method,
    }


def _omero(name: str) -> dict[str, Any]:
    return ngff.omero(name, NGFF_VERSION)


def _image_label(class_names: list[str], class_colors: list[tuple[int, int, int]]) -> dict:
    # Label 0 is "unknown": transparent, as viewers draw background.
    colors = [
        {"label-value": i, "rgba": [*map(int, rgb), 0 if i == 0 else 255]}
        for i, rgb in enumerate(class_colors)
    ]
    properties = [{"label-value": i, "class": name} for i, name in enumerate(class_names)]
    return {
        "version": NGFF_VERSION,
        "colors": colors,
        "properties": properties,
        "source": {"image": "../../"},
    }


def _check_classes(
    class_names: list[str], class_colors: list[tuple[int, int, int]]
) -> tuple[list[str], list[tuple[int, int, int]]]:
    names = [str(n) for n in class_names]
    colors = [tuple(int(v) for v in c) for c in class_colors]
    if len(names) != len(colors):
        raise StoreError(
            f"got {len(names)} class names but {len(colors)} class colours; give one colour per class"
        )
    if not 1 <= len(names) <= 256:
        raise StoreError(f"a slide needs 1 to 256 classes (label 0 = unknown), got {len(names)}")
    for name, color in zip(names, colors):
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise StoreError(f"class {name!r} has colour {color}; colours are (r, g, b) in 0..255")
    return names, colors  # type: ignore[return-value]


def _remove_existing(path: Path) -> None:
    """Delete a previous store at ``path``, refusing anything that is not a zarr folder."""
    if path.is_dir() and not path.is_symlink():
        is_zarr = (path / ".zgroup").exists() or (path / "zarr.json").exists()
        if is_zarr or not any(path.iterdir()):
            shutil.rmtree(path)
            return
    raise StoreError(
        f"{path} exists and is not a zarr store; refusing to delete it. "
        f"Choose another output path or remove it yourself"
    )


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so a pointer never outlives its data."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _ngff_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME attributes of a group: top level in NGFF 0.4, under "ome" in 0.5."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


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

    def __init__(self, path: Path, root: zarr.Group, mode: str) -> None:
        self.path = Path(path)
        self._root = root
        self._mode = mode
        self._lock = threading.Lock()
        attrs = root.attrs.asdict()
        multiscales = _ngff_attrs(attrs).get("multiscales")
        if not multiscales or not isinstance(multiscales, list):
            raise StoreError(f"{path} is not a slide store: no OME-Zarr multiscales metadata")
        multiscale = multiscales[0]
        axes = _axis_names(multiscale)
        if axes != ["c", "y", "x"]:
            raise StoreError(
                f"{path} is an OME-Zarr image with axes {axes}; a slide is an RGB image with "
                f"axes ['c', 'y', 'x']"
            )
        try:
            self._images = [root[d["path"]] for d in multiscale["datasets"]]
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{path}: multiscales lists a missing level ({exc})") from exc
        if any(not isinstance(a, zarr.Array) or a.ndim != 3 or a.shape[0] != 3 for a in self._images):
            shapes = [getattr(a, "shape", None) for a in self._images]
            raise StoreError(f"{path} is not an RGB slide: its levels have shapes {shapes}, not (3, h, w)")
        self.level_shapes = [tuple(int(v) for v in a.shape[1:]) for a in self._images]
        self.shape = self.level_shapes[0]
        self.num_levels = len(self._images)
        self.tile = int(self._images[0].chunks[-1])

        self._labels = self._open_labels(root)
        provenance = attrs.get(PROVENANCE_KEY)
        self._ours = isinstance(provenance, dict)
        if mode == "r+" and not self._ours:
            raise StoreError(
                f"{path} was not written by napari-diffinfinite (no {PROVENANCE_KEY!r} provenance); "
                f"open it read-only"
            )
        provenance = provenance if self._ours else {}
        label_meta = self._label_metadata(root)
        names = provenance.get("class_names") or [
            p.get("class", str(p.get("label-value"))) for p in label_meta.get("properties", [])
        ]
        colors = provenance.get("class_colors") or [
            c.get("rgba", [0, 0, 0])[:3] for c in label_meta.get("colors", [])
        ]
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
            return _ngff_attrs(root[f"labels/{LABEL_NAME}"].attrs.asdict()).get("image-label", {})
        except KeyError:
            return {}

    @staticmethod
    def _open_labels(root: zarr.Group) -> list[zarr.Array] | None:
        try:
            group = root[f"labels/{LABEL_NAME}"]
        except KeyError:
            return None
        multiscales = _ngff_attrs(group.attrs.asdict()).get("multiscales")
        if not multiscales:
            return None
        return [group[d["path"]] for d in multiscales[0]["datasets"]]

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
        tile: int = 512,
    ) -> SlideStore:
        """Create an empty slide store of ``shape`` (H, W) px at ``path`` and open it "r+".

        Raises StoreError if ``path`` exists (unless ``overwrite``; only a zarr folder is ever
        deleted), if its parent folder is missing or unwritable, or if the slide is too large.
        """
        path = Path(path)
        shapes = level_shapes(shape, tile)
        if tile % 2 ** (len(shapes) - 1):
            raise StoreError(
                f"tile size {tile} must be divisible by 2**{len(shapes) - 1} for a "
                f"{len(shapes)}-level pyramid; use a tile size of 512"
            )
        names, colors = _check_classes(class_names, class_colors)
        if pixel_size_um is not None and not pixel_size_um > 0:
            raise StoreError(f"the pixel size must be positive (micrometres), got {pixel_size_um}")
        record = {
            **_jsonable(dict(provenance), "provenance"),
            "synthetic": True,
            "software": "napari-diffinfinite",
            "version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "class_names": names,
            "class_colors": [list(c) for c in colors],
            "pixel_size_um": pixel_size_um,
            "complete": False,
        }

        if path.exists() or path.is_symlink():
            if not overwrite:
                raise StoreError(
                    f"{path} already exists; use --resume to continue it or --overwrite to replace it"
                )
            _remove_existing(path)
        parent = path.parent
        if not parent.is_dir():
            raise StoreError(
                f"cannot create {path}: the folder {parent} does not exist; create it first"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"cannot create {path}: no permission to write in {parent}")

        try:
            root = zarr.open_group(store=LocalStore(path), mode="w-", zarr_format=2)
            cls._create_arrays(root, shapes, tile)
            name = f"synthetic slide ({path.name})"
            labels = root["labels"]
            tissue = labels[LABEL_NAME]
            tissue.attrs.update(
                {
                    "multiscales": [_multiscale(LABEL_NAME, len(shapes), pixel_size_um, False, "nearest")],
                    "image-label": _image_label(names, colors),
                }
            )
            labels.attrs["labels"] = [LABEL_NAME]
            root.create_group(STATE_GROUP)
            # Root metadata last: a store that has "multiscales" has all its arrays.
            root.attrs.update(
                {
                    "multiscales": [_multiscale(name, len(shapes), pixel_size_um, True, "mean")],
                    "omero": _omero(name),
                    PROVENANCE_KEY: record,
                }
            )
        except BaseException as exc:
            shutil.rmtree(path, ignore_errors=True)  # ours: the path did not exist before
            if isinstance(exc, OSError):
                raise StoreError(f"cannot create the slide store {path}: {exc}") from exc
            raise
        return cls(path, root, "r+")

    @staticmethod
    def _create_arrays(root: zarr.Group, shapes: list[tuple[int, int]], tile: int) -> None:
        tissue = root.require_group("labels").require_group(LABEL_NAME)
        for k, (h, w) in enumerate(shapes):
            root.create_array(
                str(k),
                shape=(3, h, w),
                chunks=(3, tile, tile),
                dtype="uint8",
                fill_value=0,
                compressors=_image_compressor(),
                chunk_key_encoding=_V2_KEYS,
                # Every written tile leaves a chunk file, even an all-black one.
                config={"write_empty_chunks": True},
            )
            tissue.create_array(
                str(k),
                shape=(h, w),
                chunks=(tile, tile),
                dtype="uint8",
                fill_value=0,
                compressors=_image_compressor(),
                chunk_key_encoding=_V2_KEYS,
            )

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> SlideStore:
        """Open an existing slide store, read-only ("r") or for writing ("r+").

        Any OME-Zarr RGB image with axes (c, y, x) opens read-only, including stores written
        by other tools; writing needs a store created by :meth:`create`.
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
            raise StoreError(
                f"{path} is not a slide store: no OME-Zarr multiscales metadata ({exc})"
            ) from exc
        return cls(path, root, mode)

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
            raise StoreError(
                f"region y {y0}:{y1}, x {x0}:{x1} is outside level {level} ({h} x {w} px)"
            )
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
        self._require_writable()
        rgb = np.asarray(rgb)
        t = self.tile
        h, w = self.shape
        if y0 % t or x0 % t or not (0 <= y0 < h and 0 <= x0 < w):
            raise StoreError(
                f"tile origin ({y0}, {x0}) must be a multiple of {t} inside the {h} x {w} px slide"
            )
        expected = (3, min(t, h - y0), min(t, w - x0))
        if rgb.dtype != np.uint8 or rgb.shape != expected:
            raise StoreError(
                f"the tile at ({y0}, {x0}) must be uint8 of shape {expected}, got {rgb.dtype} {rgb.shape}"
            )
        with self._lock:
            for k, level in enumerate(image_levels(rgb, self.num_levels)):
                ys, xs = y0 >> k, x0 >> k
                self._images[k][:, ys : ys + level.shape[1], xs : xs + level.shape[2]] = level

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
                        raise StoreError(
                            f"{type(mask).__name__}.region returned {block.shape}, expected {(bh, bw)}"
                        )
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

    def mark_complete(self) -> None:
        """Record that every tile and the label pyramid have been written."""
        self.update_provenance(complete=True)

    # -- resume state ----------------------------------------------------------------------

    def _state_group(self, create: bool) -> zarr.Group | None:
        if create:
            return self._root.require_group(STATE_GROUP)
        try:
            group = self._fresh_root()[STATE_GROUP]
        except KeyError:
            return None
        return group if isinstance(group, zarr.Group) else None

    def save_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Save the sampler state atomically, replacing the previous one.

        Two slots (``state_0``, ``state_1``) alternate: the arrays go into the slot that is not
        current, are flushed to disk, and only then does the pointer (the "state" attribute
        of ``diffinfinite/``, written by zarr via temp file + rename) switch to it. A crash at
        any point leaves the previous complete state loadable. ``meta`` must be JSON-like;
        tuples come back as lists.
        """
        self._require_writable()
        meta_json = _jsonable(meta, "state meta")
        spec: dict[str, dict[str, Any]] = {}
        for name, array in arrays.items():
            if not name or "/" in name or name.startswith("."):
                raise StoreError(f"state array name {name!r} must be non-empty, without '/' or a leading '.'")
            array = np.asarray(array)
            if array.dtype.kind not in "biufc":
                raise StoreError(f"state array {name!r} has dtype {array.dtype}; only numeric arrays are saved")
            spec[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        with self._lock:
            group = self._state_group(create=True)
            pointer = group.attrs.get("state")
            slot = _STATE_SLOTS[1] if pointer and pointer.get("slot") == _STATE_SLOTS[0] else _STATE_SLOTS[0]
            target = group.create_group(slot, overwrite=True)
            for name, array in arrays.items():
                target.create_array(name, data=np.asarray(array), compressors=_state_compressor())
            _fsync_tree(self.path / STATE_GROUP / slot)
            self._commit_state_pointer(
                group,
                {
                    "slot": slot,
                    "arrays": spec,
                    "meta": meta_json,
                    "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                },
            )

    @staticmethod
    def _commit_state_pointer(group: zarr.Group, pointer: dict) -> None:
        # The single atomic step of save_state (zarr's LocalStore replaces .zattrs by rename).
        group.attrs["state"] = pointer

    def load_state(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The last state saved by :meth:`save_state` as (arrays, meta), or None if none was."""
        group = self._state_group(create=False)
        pointer = group.attrs.get("state") if group is not None else None
        if not pointer:
            return None
        try:
            slot = group[pointer["slot"]]
            arrays = {}
            for name, spec in pointer["arrays"].items():
                array = np.asarray(slot[name][...])
                if array.dtype != np.dtype(spec["dtype"]) or list(array.shape) != spec["shape"]:
                    raise ValueError(f"{name} is {array.dtype} {array.shape}, expected {spec}")
                arrays[name] = array
        except (KeyError, ValueError) as exc:
            raise StoreError(
                f"the resume state in {self.path} is damaged ({exc}); start again with --overwrite"
            ) from exc
        return arrays, dict(pointer["meta"])

    def save_canvas(self, canvas: np.ndarray) -> None:
        """Store the label canvas (uint8, canvas resolution) the slide is generated from."""
        self._require_writable()
        canvas = np.asarray(canvas)
        if canvas.dtype != np.uint8 or canvas.ndim != 2:
            raise StoreError(f"a label canvas is a 2-D uint8 array, got {canvas.dtype} {canvas.shape}")
        with self._lock:
            self._state_group(create=True).create_array(
                "canvas", data=canvas, compressors=_image_compressor(), overwrite=True
            )

    def load_canvas(self) -> np.ndarray | None:
        """The label canvas saved by :meth:`save_canvas`, or None."""
        group = self._state_group(create=False)
        if group is None or "canvas" not in group:
            return None
        return np.asarray(group["canvas"][...])

    def __repr__(self) -> str:
        return f"SlideStore({str(self.path)!r}, shape={self.shape}, levels={self.num_levels}, mode={self._mode!r})"
