"""Screenshots of the DiffInfinite panel in a real napari window, for docs/plugin.md.

Opens napari at 1920 x 1080, opens Plugins > DiffInfinite > DiffInfinite (the tabbed panel,
through the npe2 manifest, as a user would), loads the checkpoints, paints a layout, runs a
small generation, exports a region and reopens it over its source, saving PNGs into
``docs/images/`` (``widget-*.png``: one tab of the panel; ``window-*.png``: the window).
Needs a display; on a headless machine (about 5 minutes on a loaded 2-core CPU):

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py
    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py --sample   # also rebuild the sample

Options choose the models (default: the embedded demo models), the slide size and the
number of sampling steps, so the screenshots can be regenerated with a trained model;
``--sample`` first regenerates the shipped File > Open Sample slide with the demo models.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-diffinfinite"


def wait_until(app: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``condition()`` holds (or fail after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def pump(app: Any, seconds: float = 0.5) -> None:
    """Let the window repaint."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--image-model", default="", help="image model path (default: embedded)")
    parser.add_argument("--mask-model", default="", help="mask model path (default: embedded)")
    parser.add_argument("--vae", default="", help="SD-2 VAE folder for latent models")
    parser.add_argument("--size", type=int, default=1024, help="slide side in pixels")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps")
    parser.add_argument("--sample", action="store_true", help="first rebuild the shipped sample slide")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for the generation")
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("NAPARI_DIFFINFINITE_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_diffinfinite._sample_data import build_sample_archive, ring_layout

    if args.sample:
        print("rebuilt", build_sample_archive())
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diffinfinite-screenshots-"))
    viewer = napari.Viewer(title="napari-diffinfinite", show=True)
    window = viewer.window
    qt_window = window._qt_window
    qt_window.resize(1920, 1080)
    app = QApplication.instance()

    dock, panel = window.add_plugin_dock_widget(PLUGIN, "DiffInfinite")
    checkpoints, canvas, generate, export = panel.checkpoints, panel.canvas, panel.generate, panel.export
    # no modal questions in a script: start long jobs, overwrite earlier outputs
    generate.ask = export.ask = lambda title, text, answers: "Start" if "Start" in answers else "Overwrite"

    def show(name: str) -> None:
        panel.show_step(name)
        pump(app, 0.3)

    def close_toasts() -> None:
        """Dismiss napari's notification toasts: they would cover the scale bar."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in qt_window.findChildren(NapariQtNotification):
            toast.close()

    def save_window(name: str) -> None:
        pump(app, 0.3)
        close_toasts()
        pump(app, 0.5)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        from PIL import Image

        Image.fromarray(shot).save(args.out / name)
        print("wrote", args.out / name, shot.shape)

    def save_widget(name: str, step: str) -> None:
        """The panel showing the tab ``step``, cropped to the tab's content."""
        from qtpy.QtCore import QRect

        show(step)
        widget = panel.steps()[step]
        top = widget.mapTo(dock, widget.rect().topLeft()).y()
        height = min(dock.height(), top + widget.sizeHint().height() + 8)
        dock.grab(QRect(0, 0, dock.width(), height)).save(str(args.out / name))
        print("wrote", args.out / name)

    # 1. checkpoints
    show("Checkpoints")
    checkpoints.image_path.set_value(args.image_model)
    checkpoints.mask_path.set_value(args.mask_model)
    checkpoints.vae_path.set_value(args.vae)
    checkpoints.use_mask.setChecked(True)
    checkpoints.load()
    wait_until(app, lambda: checkpoints.worker is None, 300, "the checkpoints to load")
    if checkpoints.state.image_model is None:
        raise SystemExit("loading the checkpoints failed; see the notification above")
    save_widget("widget-checkpoints.png", "Checkpoints")

    # 2. mask canvas: a ring layout, then a brush stroke of another class
    show("Mask canvas")
    canvas.set_slide_shape(args.size, args.size)
    canvas.create_canvas()
    num_classes = len(canvas.state.class_names)
    layer = canvas.set_canvas(ring_layout(num_classes, 64))
    canvas.legend.setCurrentRow(min(2, num_classes - 1))
    layer.brush_size = 6
    for t in np.linspace(0, 1, 40):
        layer.paint((8 + 48 * t, 12 + 20 * t), layer.selected_label, refresh=False)
    layer.refresh()
    viewer.reset_view()
    save_widget("widget-mask-canvas.png", "Mask canvas")
    save_window("window-mask-canvas.png")

    # 3. generation: one screenshot while sampling (preview), one when done
    show("Generate")
    generate.output.set_value(str(work / "slide.zarr"))
    generate.steps.setValue(args.steps)
    wait_until(app, lambda: generate.calibration is not None, 300, "the time estimate")
    shots = {"preview": False}
    original = generate._on_progress

    def on_progress(event: Any) -> None:
        original(event)
        if (not shots["preview"] and event.stage == "sample" and event.preview is not None
                and event.done >= event.total // 2):  # fmt: skip
            shots["preview"] = True
            save_window("window-generate-preview.png")

    generate._on_progress = on_progress
    if generate.generate() is None:
        raise SystemExit("Generate refused to start; see the notification above")
    wait_until(app, lambda: generate.worker is None, args.timeout, "the generation")
    viewer.layers[canvas.layer.name].visible = False
    viewer.layers["slide labels"].visible = False  # the tissue itself; the labels match the canvas
    viewer.reset_view()
    save_widget("widget-generate.png", "Generate")
    save_window("window-generated-slide.png")

    # 4. export a rectangle
    show("Export")
    shapes = export.draw_rectangle()
    q = args.size // 4
    shapes.add_rectangles(np.array([[q, q], [3 * q, 2 * q + q // 2]]))
    shapes.mode = "select"
    export.format.setCurrentIndex(export.format.findData("ome-zarr"))
    export.output.set_value(str(work / "region.zarr"))
    export.export()
    wait_until(app, lambda: export.worker is None, 300, "the export")
    save_widget("widget-export.png", "Export")
    save_window("window-export.png")

    # 5. the exported region opened with the reader: at its place over the (dimmed) source
    for layer in list(viewer.layers):
        if layer.name not in ("slide",):
            viewer.layers.remove(layer)
    viewer.layers["slide"].opacity = 0.35
    viewer.open(str(work / "region.zarr"), plugin=PLUGIN)
    viewer.reset_view()
    save_window("window-reader.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
