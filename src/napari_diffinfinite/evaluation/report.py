"""Writes an evaluation: ``metrics.json``, sample grids, a one-page ``report.png`` and ``report.html``.

The pictures need nothing beyond Pillow: sample grids of real and synthetic tiles side by
side, bars for the bounded metrics (precision, recall, authenticity, Dice per class) and
the folded seam profiles of each synthetic slide (a flat line is seam-free; a spike sits
at the phase of a seam). The HTML page shows the same with tables and inline SVG.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .distances import EvaluationError
from .evaluate import EvaluationResult

__all__ = ["write_report", "tile_grid", "summary_lines"]

_BG, _FG, _MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)
_REAL, _FAKE = (40, 110, 200), (210, 80, 40)


def tile_grid(tiles: Sequence[np.ndarray], columns: int = 4, cell: int = 128, gap: int = 4) -> Image.Image:
    """Tiles in a grid of ``columns``, each shrunk to ``cell`` px, on white."""
    rows = max(1, math.ceil(len(tiles) / columns))
    grid = Image.new("RGB", (columns * (cell + gap) - gap, rows * (cell + gap) - gap), _BG)
    for i, tile in enumerate(tiles):
        img = Image.fromarray(tile).resize((cell, cell), Image.Resampling.BOX)
        grid.paste(img, ((i % columns) * (cell + gap), (i // columns) * (cell + gap)))
    return grid


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_lines(metrics: dict) -> list[str]:
    """The headline numbers as short text lines (for the PNG, the HTML and the terminal)."""
    lines = []
    q = metrics.get("quality", {})
    feat = metrics.get("features", {}).get("name", "?")
    lines.append(
        f"features: {feat}  tiles: real {metrics['tiles']['real']['tiles']}, synthetic {metrics['tiles']['synthetic']['tiles']}"
    )
    at = metrics.get("pixel_size", {}).get("compared_at_um")
    if at is not None:
        lines.append(f"compared at {at:g} um/px (finer slides box-filtered down)")
    lines.append(f"FID {_fmt(q.get('fid'))}   KID {_fmt(q.get('kid_mean'))} +- {_fmt(q.get('kid_std'))}")
    if "is_mean" in q:
        lines.append(f"IS synthetic {_fmt(q['is_mean'])} +- {_fmt(q['is_std'])}   real {_fmt(q['is_real_mean'])}")
    lines.append(f"precision {_fmt(q.get('precision'))}   recall {_fmt(q.get('recall'))}")
    if "patch_fid" in metrics:
        lines.append(f"Patch-FID {_fmt(metrics['patch_fid']['patch_fid'])} ({metrics['patch_fid']['crops']} crops)")
    if "privacy" in metrics:
        p = metrics["privacy"]
        text = f"authenticity {_fmt(p['authenticity'])} ({p['unauthentic_count']} tiles look copied)"
        if "ct" in p:
            text += f"   C_T {_fmt(p['ct'])}"
        lines.append(text)
    for path, entry in metrics.get("slides", {}).items():
        name = Path(path).name
        for period, s in entry.get("seams", {}).items():
            if isinstance(s, dict) and "x" in s:
                lines.append(
                    f"{name}: seams @{period}px  x {_fmt(s['x']['score'])} (phase {s['x']['phase']})  "
                    f"y {_fmt(s['y']['score'])} (phase {s['y']['phase']})"
                )
        adh = entry.get("adherence", {})
        if "mean_iou" in adh:
            dice = ", ".join(f"{k} {_fmt(v)}" for k, v in adh["dice"].items())
            lines.append(f"{name}: layout mIoU {_fmt(adh['mean_iou'])}  Dice {dice}")
    return lines


def _bars(draw: ImageDraw.ImageDraw, x: int, y: int, items: list[tuple[str, float | None]], font, width: int = 220):
    for i, (label, value) in enumerate(items):
        yy = y + i * 22
        draw.text((x, yy), label, fill=_FG, font=font)
        draw.rectangle((x + 120, yy + 3, x + 120 + width, yy + 15), outline=_MUTED)
        if value is not None and math.isfinite(value):
            draw.rectangle((x + 120, yy + 3, x + 120 + int(width * min(max(value, 0), 1)), yy + 15), fill=_REAL)
        draw.text((x + 128 + width, yy), _fmt(value), fill=_FG, font=font)
    return y + len(items) * 22


def _relative(profiles: dict) -> dict:
    """Each profile divided by its median, so 1.0 is the typical gradient and a seam stands out."""
    return {k: list(np.asarray(p, float) / (float(np.median(p)) or 1.0)) for k, p in profiles.items()}


def _profile_plot(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], profiles: dict, font) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=_MUTED)
    profiles = _relative(profiles)
    values = [v for p in profiles.values() for v in p]
    if not values:
        return
    lo, hi = min(0.9, min(values)), max(1.5, max(values))  # a fixed floor of scale: noise stays flat
    span = hi - lo
    one = y1 - 2 - (y1 - y0 - 4) * (1 - lo) / span
    draw.line([(x0, one), (x1, one)], fill=(200, 200, 200))
    draw.text((x0 + 4, one - 16), "1.0 = median", fill=_MUTED, font=font)
    for (label, profile), colour in zip(profiles.items(), (_REAL, _FAKE)):
        n = len(profile)
        points = [
            (x0 + 2 + (x1 - x0 - 4) * i / max(n - 1, 1), y1 - 2 - (y1 - y0 - 4) * (v - lo) / span)
            for i, v in enumerate(profile)
        ]
        draw.line(points, fill=colour, width=1)
        draw.text((x1 - 60, y0 + 4 + 14 * list(profiles).index(label)), label, fill=colour, font=font)


def render_png(result: EvaluationResult) -> Image.Image:
    """A one-page summary: the two sample grids, the headline numbers, bars and seam profiles."""
    m = result.metrics
    font = ImageFont.load_default(size=14)
    title_font = ImageFont.load_default(size=20)
    real, fake = tile_grid(result.real_tiles), tile_grid(result.synthetic_tiles)
    lines = summary_lines(m)
    seam_plots = [
        (Path(path).name, period, s)
        for path, entry in m.get("slides", {}).items()
        for period, s in entry.get("seams", {}).items()
        if isinstance(s, dict) and "x" in s
    ]
    bars = [("precision", m["quality"].get("precision")), ("recall", m["quality"].get("recall"))]
    if "privacy" in m:
        bars.append(("authenticity", m["privacy"]["authenticity"]))
    for entry in m.get("slides", {}).values():
        for cls, dice in entry.get("adherence", {}).get("dice", {}).items():
            bars.append((f"Dice {cls}", dice))
    width = real.width + fake.width + 60
    height = 60 + max(real.height, fake.height) + 30 + 20 * len(lines) + 22 * len(bars) + 150 * len(seam_plots) + 40
    page = Image.new("RGB", (max(width, 760), height), _BG)
    draw = ImageDraw.Draw(page)
    draw.text((20, 14), "napari-diffinfinite evaluation", fill=_FG, font=title_font)
    draw.text((20, 40), "real", fill=_REAL, font=font)
    draw.text((40 + real.width, 40), "synthetic", fill=_FAKE, font=font)
    page.paste(real, (20, 60))
    page.paste(fake, (40 + real.width, 60))
    y = 70 + max(real.height, fake.height)
    for line in lines:
        draw.text((20, y), line, fill=_FG, font=font)
        y += 20
    y = _bars(draw, 20, y + 10, bars, font)
    for name, period, s in seam_plots:
        draw.text(
            (20, y + 8), f"{name}: folded |gradient| by position mod {period} px (flat = no seam)", fill=_FG, font=font
        )
        _profile_plot(
            draw, (20, y + 28, page.width - 20, y + 140), {"x": s["x"]["profile"], "y": s["y"]["profile"]}, font
        )
        y += 150
    return page


def _svg_profile(profiles: dict, width: int = 480, height: int = 120) -> str:
    profiles = _relative(profiles)
    values = [v for p in profiles.values() for v in p]
    lo, hi = min(0.9, min(values)), max(1.5, max(values))
    span = hi - lo
    paths = []
    for (label, profile), colour in zip(profiles.items(), ("#286ec8", "#d25028")):
        n = len(profile)
        pts = " ".join(
            f"{width * i / max(n - 1, 1):.1f},{height - height * (v - lo) / span:.1f}" for i, v in enumerate(profile)
        )
        paths.append(f'<polyline fill="none" stroke="{colour}" points="{pts}"><title>{label}</title></polyline>')
    return f'<svg width="{width}" height="{height}" style="border:1px solid #999">{"".join(paths)}</svg>'


def render_html(result: EvaluationResult) -> str:
    m = result.metrics
    rows = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(m))
    seams = []
    for path, entry in m.get("slides", {}).items():
        for period, s in entry.get("seams", {}).items():
            if isinstance(s, dict) and "x" in s:
                seams.append(
                    f"<h3>{html.escape(Path(path).name)}: seams at period {period} px "
                    f"(blue x, orange y)</h3>{_svg_profile({'x': s['x']['profile'], 'y': s['y']['profile']})}"
                )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>napari-diffinfinite evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:48%;margin-right:1%}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head>
<body><h1>napari-diffinfinite evaluation</h1>
<h2>Samples</h2><p>left: real, right: synthetic (random tiles of the evaluated sets)</p>
<img src="real_grid.png" alt="real tiles"><img src="synthetic_grid.png" alt="synthetic tiles">
<h2>Summary</h2><ul>{rows}</ul>
{"".join(seams)}
<h2>All numbers</h2><pre>{html.escape(json.dumps(m, indent=2))}</pre>
</body></html>
"""


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


#: the files of a report folder: all that --overwrite may replace
REPORT_FILES = {
    "metrics": "metrics.json",
    "real_grid": "real_grid.png",
    "synthetic_grid": "synthetic_grid.png",
    "report_png": "report.png",
    "report_html": "report.html",
}


def check_report_folder(out: str | Path, *, overwrite: bool = False) -> None:
    """Refuse ``out`` unless it is new, or (with ``overwrite``) a report folder holding only the
    files a report has: --overwrite removes only what this tool wrote. Call before the work."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise EvaluationError(f"{out} exists; choose another --out folder or pass --overwrite")
    if out.is_symlink() or not out.is_dir() or not (out / REPORT_FILES["metrics"]).is_file():
        raise EvaluationError(f"{out} exists and is not an evaluation report folder; choose another --out folder")
    from ..slide.ownership import unexpected_entries

    extra = unexpected_entries(out, set(REPORT_FILES.values()))
    if extra:
        raise EvaluationError(
            f"refusing to overwrite {out}: it holds files this tool did not write ({', '.join(extra[:5])}); "
            "move them out or choose another --out folder"
        )


def write_report(result: EvaluationResult, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write metrics.json, real_grid.png, synthetic_grid.png, report.png and report.html into ``out_dir``.

    The files are written into a temporary sibling folder renamed into place at the end, so
    a failed run leaves no partial report. An existing report folder is replaced only with
    ``overwrite``; a folder holding anything else is never replaced.
    """
    out = Path(out_dir)
    check_report_folder(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.metrics = _json_ready(result.metrics)
    names = REPORT_FILES
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / names["metrics"]).write_text(json.dumps(result.metrics, indent=2))
        tile_grid(result.real_tiles).save(tmp / names["real_grid"])
        tile_grid(result.synthetic_tiles).save(tmp / names["synthetic_grid"])
        render_png(result).save(tmp / names["report_png"])
        (tmp / names["report_html"]).write_text(render_html(result))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {key: out / name for key, name in names.items()}
