#!/usr/bin/env python
"""The cascade-vs-single-scale picture of docs/cascade.md: real | cascade | single scale.

``python scripts/cascade_pictures.py [WORK]`` reads ``WORK/cascade.zarr`` and ``WORK/single.zarr``
(written by ``scripts/train_demo_cascade.py --generate``) and the real CMU slide read at their
pixel size, and writes ``docs/images/cascade-vs-single.png``: the three whole slides, and below
them the same 256 px region of each at full resolution.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from napari_diffinfinite.evaluation.tiles import match_pixel_size, open_source
from napari_diffinfinite.training import demo_data

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    work = Path(argv[0]) if argv else REPO / "build" / "demo-cascade"
    stores = {name: open_source(work / f"{name}.zarr") for name in ("cascade", "single")}
    pixel = stores["cascade"].pixel_size_um
    (real,), _ = match_pixel_size([open_source(demo_data.demo_slide())], pixel)
    h, w = stores["cascade"].level_shapes[0]
    h, w = min(h, real.level_shapes[0][0]), min(w, real.level_shapes[0][1])
    sources = {
        "real slide": real,
        "cascade (2 -> 1 um/px)": stores["cascade"],
        "single scale (1 um/px)": stores["single"],
    }
    thumb_w = 360
    crop = (int(h * 0.42), int(w * 0.30), 256)  # a region with epidermis, dermis and glass
    columns = []
    for title, source in sources.items():
        whole = source.read(0, 0, h, 0, w)
        thumb = Image.fromarray(whole).resize((thumb_w, round(thumb_w * h / w)), Image.Resampling.BOX)
        y, x, side = crop
        detail = Image.fromarray(whole[y : y + side, x : x + side]).resize((thumb_w, thumb_w), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(thumb)
        s = thumb_w / w
        draw.rectangle([x * s, y * s, (x + side) * s, (y + side) * s], outline=(0, 0, 0), width=2)
        column = Image.new("RGB", (thumb_w, 24 + thumb.height + 8 + thumb_w), "white")
        ImageDraw.Draw(column).text((4, 6), title, fill=(0, 0, 0))
        column.paste(thumb, (0, 24))
        column.paste(detail, (0, 24 + thumb.height + 8))
        columns.append(column)
    out = Image.new("RGB", (len(columns) * (thumb_w + 8) - 8, columns[0].height), "white")
    for i, column in enumerate(columns):
        out.paste(column, (i * (thumb_w + 8), 0))
    target = REPO / "docs" / "images" / "cascade-vs-single.png"
    out.save(target, optimize=True)
    print(f"wrote {target} ({out.width}x{out.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
