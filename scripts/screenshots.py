"""Screenshots of the DiffInfinite dock widgets in a real napari window, for docs/plugin.md.

Opens napari, docks the plugin's widgets (through the npe2 manifest, as a user would),
loads the checkpoints, paints a layout, runs a small generation and exports a region,
saving PNGs into ``docs/images/`` along the way. Needs a display; on a headless machine:

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/screenshots.py

Options choose the models (default: the embedded demo models), the slide size and the
number of sampling steps, so the screenshots can be regenerated with a trained model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

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
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for the generation")
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("NAPARI_DIFFINFINITE_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_diffinfinite._sample_data import ring_layout

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diffinfinite-screenshots-"))
    viewer = napari.Viewer(title="napari-diffinfinite", show=True)
    window = viewer.window
    qt_window = window._qt_window
    qt_window.resize(1600, 1000)
    app = QApplication.instance()

    docks = {}
    for name in ("Checkpoints", "Mask canvas", "Generate", "Export"):
        docks[name] = window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    checkpoints = docks["Checkpoints"][1]
    canvas = docks["Mask canvas"][1]
    generate = docks["Generate"][1]
    export = docks["Export"][1]

    def show(name: str) -> None:
        dock = docks[name][0]
        dock.show()
        dock.raise_()
        pump(app, 0.3)

    def save_window(name: str) -> None:
        pump(app, 0.5)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        from PIL import Image

        Image.fromarray(shot).save(args.out / name)
        print("wrote", args.out / name, shot.shape)

    def save_widget(name: str, dock_name: str) -> None:
        """The dock widget, cropped to its content (docks stretch to the window height)."""
        from qtpy.QtCore import QRect

        pump(app, 0.3)
        dock, widget = docks[dock_name]
        title = widget.mapTo(dock, widget.rect().topLeft()).y()
        height = min(dock.height(), title + widget.sizeHint().height() + 8)
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
    generate.overwrite.setChecked(True)
    generate.steps.setValue(args.steps)
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

    # 5. the exported region opened with the reader
    viewer.layers.clear()
    viewer.open(str(work / "region.zarr"), plugin=PLUGIN)
    viewer.reset_view()
    save_window("window-reader.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
