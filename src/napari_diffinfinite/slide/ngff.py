"""The one writer of OME-NGFF metadata, for the slide store and every OME-Zarr export.

It writes, for NGFF 0.4 (zarr format 2, attributes at the top level) and 0.5 (zarr format 3,
attributes under ``"ome"``):

- the image group: ``multiscales`` (axes ``c, y, x``, levels ``"0"``, ``"1"``, ... with
  ``2**k`` scale transforms, in micrometres when the pixel size is known), ``omero``
  rendering metadata with channels named Red/Green/Blue, and ``bioformats2raw.layout: 3``;
- ``OME/METADATA.ome.xml``: the OME-XML that QuPath's own OME-Zarr writer and bioformats2raw
  add. QuPath 0.6 reads OME-Zarr through Bio-Formats' OMEZarrReader, which takes the channel
  names and the physical pixel size only from this file and shows the image as RGB only when
  the channels are named Red, Green and Blue;
- the label image ``labels/<name>`` (``multiscales`` + ``image-label`` with a colour and a
  class name per label value) and the ``labels`` group listing it.

Everything here is plain JSON built by hand (ome-zarr-py's writers need their output patched
for the downsampling type and the 0.5 labels group) and checked by ``ome-zarr-models`` in the
tests. Readers of our metadata use :func:`ngff_attrs`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from .. import __version__
from .constants import (
    BIOFORMATS2RAW_LAYOUT,
    LABEL_NAME,
    OME_DIR,
    OME_XML,
    RGB_CHANNELS,
    SOFTWARE,
    SYNTHETIC_NOTE,
    TILE,
)

__all__ = [
    "ngff_attrs",
    "axes",
    "datasets",
    "omero",
    "image_label",
    "write_image_metadata",
    "write_label_metadata",
    "write_ome_xml",
    "ome_xml",
    "image_compressor",
    "create_level_arrays",
]

OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def ngff_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME attributes of a group: top level in NGFF 0.4, under ``"ome"`` in 0.5."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def axes(pixel_size_um: float | None, channel: bool) -> list[dict[str, str]]:
    """(c,) y, x axes; spatial axes carry "micrometer" when the pixel size is known."""
    unit = {"unit": "micrometer"} if pixel_size_um is not None else {}
    head = [{"name": "c", "type": "channel"}] if channel else []
    return head + [{"name": n, "type": "space", **unit} for n in ("y", "x")]


def datasets(
    num_levels: int, pixel_size_um: float | None, channel: bool, origin: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """Level paths "0", "1", ... with 2**k scale transforms (in micrometres when known).

    ``origin`` (y, x), in level-0 pixels of a source slide, adds a translation to every level,
    so that a region exported from a slide is placed where it lies on that slide.
    """
    px = 1.0 if pixel_size_um is None else float(pixel_size_um)
    out = []
    for k in range(num_levels):
        scale = ([1.0] if channel else []) + [px * 2**k] * 2
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if origin is not None and any(origin):
            translation = ([0.0] if channel else []) + [float(origin[0]) * px, float(origin[1]) * px]
            transforms.append({"type": "translation", "translation": translation})
        out.append({"path": str(k), "coordinateTransformations": transforms})
    return out


def _multiscale(
    version: str,
    name: str,
    num_levels: int,
    pixel_size_um: float | None,
    channel: bool,
    method: str,
    origin: tuple[int, int] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"version": version} if version == "0.4" else {}
    meta.update(
        name=name,
        axes=axes(pixel_size_um, channel),
        datasets=datasets(num_levels, pixel_size_um, channel, origin),
        type=method,
    )
    return meta


def omero(name: str, version: str | None = None) -> dict[str, Any]:
    """RGB rendering metadata: three linear channels named Red, Green, Blue, window 0-255."""
    meta: dict[str, Any] = {"name": name}
    if version is not None:
        meta["version"] = version
    meta["channels"] = [
        {
            "label": label,
            "color": color,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"start": 0, "end": 255, "min": 0, "max": 255},
        }
        for label, color in RGB_CHANNELS
    ]
    meta["rdefs"] = {"model": "color", "defaultT": 0, "defaultZ": 0}
    return meta


def image_label(version: str, class_names: Sequence[str], class_colors: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``image-label`` metadata: one colour and one class name per label value (0 transparent)."""
    colors = [
        {"label-value": i, "rgba": [*(int(v) for v in rgb[:3]), 0 if i == 0 else 255]}
        for i, rgb in enumerate(class_colors)
    ]
    properties = [{"label-value": i, "class": str(name)} for i, name in enumerate(class_names)]
    meta: dict[str, Any] = {"version": version} if version == "0.4" else {}
    meta.update(colors=colors, properties=properties, source={"image": "../../"})
    return meta


def _set_ngff(group: zarr.Group, version: str, meta: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write ``meta`` as the group's OME attributes (top level in 0.4, under "ome" in 0.5)."""
    attrs = dict(extra or {})
    if version == "0.4":
        attrs.update(meta)
    else:
        attrs["ome"] = {"version": version, **meta}
    group.attrs.update(attrs)


def write_label_metadata(
    root: zarr.Group,
    *,
    version: str,
    num_levels: int,
    pixel_size_um: float | None,
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    name: str = LABEL_NAME,
    origin: tuple[int, int] | None = None,
) -> None:
    """Metadata of ``labels/<name>`` (its level arrays must exist) and of the ``labels`` group."""
    labels = root["labels"]
    _set_ngff(
        labels[name],
        version,
        {
            "multiscales": [_multiscale(version, name, num_levels, pixel_size_um, False, "nearest", origin)],
            "image-label": image_label(version, class_names, class_colors),
        },
    )
    _set_ngff(labels, version, {"labels": [name]})


def write_image_metadata(
    root: zarr.Group,
    *,
    version: str,
    name: str,
    num_levels: int,
    pixel_size_um: float | None,
    extra: dict[str, Any] | None = None,
    origin: tuple[int, int] | None = None,
) -> None:
    """The root image's ``multiscales``, ``omero`` and ``bioformats2raw.layout``, plus ``extra``.

    Written in one attribute update, last: a reader that sees ``multiscales`` finds every
    level in place. ``extra`` holds our own top-level attributes (the provenance); ``origin``
    (y, x) places an exported region on its source slide (see :func:`datasets`).
    """
    meta = {
        "multiscales": [_multiscale(version, name, num_levels, pixel_size_um, True, "mean", origin)],
        "omero": omero(name, version if version == "0.4" else None),
        "bioformats2raw.layout": BIOFORMATS2RAW_LAYOUT,
    }
    _set_ngff(root, version, meta, extra)


def ome_xml(name: str, shape: tuple[int, int], pixel_size_um: float | None) -> str:
    """OME-XML (2016-06 schema) of a uint8 RGB image of ``shape`` (H, W), as QuPath writes it.

    One Image with three channels named Red, Green and Blue (colours as signed RGBA integers)
    and ``PhysicalSizeX/Y`` in µm when the pixel size is known.
    """
    ET.register_namespace("", OME_NAMESPACE)
    q = f"{{{OME_NAMESPACE}}}"
    root = ET.Element(f"{q}OME", {"Creator": f"{SOFTWARE} {__version__}"})
    image = ET.SubElement(root, f"{q}Image", {"ID": "Image:0", "Name": name})
    ET.SubElement(image, f"{q}Description").text = SYNTHETIC_NOTE
    h, w = (int(v) for v in shape)
    pixels_attrs = {
        "ID": "Pixels:0",
        "DimensionOrder": "XYZCT",
        "Type": "uint8",
        "SizeX": str(w),
        "SizeY": str(h),
        "SizeZ": "1",
        "SizeC": str(len(RGB_CHANNELS)),
        "SizeT": "1",
    }
    if pixel_size_um is not None:
        size = repr(float(pixel_size_um))
        pixels_attrs.update(PhysicalSizeX=size, PhysicalSizeXUnit="µm", PhysicalSizeY=size, PhysicalSizeYUnit="µm")
    pixels = ET.SubElement(image, f"{q}Pixels", pixels_attrs)
    for c, (label, color) in enumerate(RGB_CHANNELS):
        rgba = (int(color, 16) << 8) | 0xFF
        signed = rgba - (1 << 32) if rgba >= 1 << 31 else rgba
        ET.SubElement(
            pixels,
            f"{q}Channel",
            {"ID": f"Channel:0:{c}", "Name": label, "SamplesPerPixel": "1", "Color": str(signed)},
        )
    ET.SubElement(pixels, f"{q}MetadataOnly")
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def write_ome_xml(
    root: zarr.Group,
    folder: str | os.PathLike,
    *,
    version: str,
    name: str,
    shape: tuple[int, int],
    pixel_size_um: float | None,
) -> Path:
    """Create the ``OME`` group of ``root`` (on disk at ``folder``) with ``METADATA.ome.xml``."""
    group = root.require_group(OME_DIR)
    if version != "0.4":
        group.attrs["ome"] = {"version": version}
    path = Path(folder) / OME_DIR / OME_XML
    path.write_text(ome_xml(name, shape, pixel_size_um), encoding="utf-8")
    return path


def image_compressor(zarr_format: int, *, fast: bool = False) -> Any:
    """The chunk compressor of our pyramids: zstd (lz4 for throw-away staging, ``fast``)."""
    cname, level = ("lz4", 1) if fast else ("zstd", 5)
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(cname=cname, clevel=level, shuffle=numcodecs.Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=cname, clevel=level, shuffle="shuffle")


def create_level_arrays(
    group: zarr.Group,
    shapes: Sequence[tuple[int, int]],
    *,
    rgb: bool,
    zarr_format: int,
    tile: int = TILE,
    fast: bool = False,
    write_empty_chunks: bool = False,
) -> list[zarr.Array]:
    """Create the uint8 level arrays ``"0"``, ``"1"``, ... of a pyramid in ``group``.

    RGB levels are (3, h, w) with (3, tile, tile) chunks, label levels (h, w); zarr format 2
    uses "/"-separated chunk keys (NGFF 0.4), format 3 names the dimensions (NGFF 0.5).
    """
    arrays = []
    for k, (h, w) in enumerate(shapes):
        options: dict[str, Any] = {
            "shape": (3, h, w) if rgb else (h, w),
            "chunks": (3, tile, tile) if rgb else (tile, tile),
            "dtype": "uint8",
            "fill_value": 0,
            "compressors": image_compressor(zarr_format, fast=fast),
        }
        if write_empty_chunks:
            options["config"] = {"write_empty_chunks": True}
        if zarr_format == 2:
            options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            options["dimension_names"] = ["c", "y", "x"] if rgb else ["y", "x"]
        arrays.append(group.create_array(str(k), **options))
    return arrays
