"""OME-NGFF metadata pieces shared by the slide store and the exporters."""

from __future__ import annotations

from typing import Any

RGB_CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))


def axes(pixel_size_um: float | None, channel: bool) -> list[dict[str, str]]:
    """(c,) y, x axes; spatial axes carry "micrometer" when the pixel size is known."""
    unit = {"unit": "micrometer"} if pixel_size_um is not None else {}
    head = [{"name": "c", "type": "channel"}] if channel else []
    return head + [{"name": n, "type": "space", **unit} for n in ("y", "x")]


def datasets(num_levels: int, pixel_size_um: float | None, channel: bool) -> list[dict[str, Any]]:
    """Level paths "0", "1", ... with 2**k scale transforms (in micrometres when known)."""
    px = 1.0 if pixel_size_um is None else float(pixel_size_um)
    out = []
    for k in range(num_levels):
        scale = ([1.0] if channel else []) + [px * 2**k] * 2
        out.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return out


def omero(name: str, version: str | None = None) -> dict[str, Any]:
    """RGB rendering metadata: three linear channels, window 0-255."""
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
