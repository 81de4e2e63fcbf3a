"""Generation in napari against the command line: the same job, timed both ways, in one run.

The job: one slide (default 512 x 512 px, 2 steps, the embedded demo image model, label 1
everywhere, seed 0, CPU) written to a fresh store. Timed three ways, interleaved so that
load on the machine hits them alike, ``--repeats`` times each:

- ``cli``: ``diffinfinite generate ...`` in a subprocess, wall time of the whole command
  (Python start, imports and model loading included);
- ``engine``: the same job in this process with the models already loaded, no GUI: the
  part of the CLI's time the widget has to match;
- ``widget``: the DiffInfinite panel in a shown napari window (run this under Xvfb for
  software OpenGL: ``xvfb-run -a -s "-screen 0 1920x1200x24"``), models loaded and the
  canvas painted beforehand, from pressing Generate to the status "Done", with Qt's event
  loop running as under ``napari.run()`` (progress bar, preview and streamed layers
  included).

Prints a JSON record (medians, every sample, the machine, the load) and the ratios
widget / engine and widget / cli.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_gui.py
    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_gui.py --size 1024 --steps 6 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli_seconds(out: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "napari_diffinfinite.cli", "generate", "--out", str(out),
               "--size", f"{args.size}x{args.size}", "--label", "1", "--steps", str(args.steps), "--seed", "0",
               "--device", args.device, "-q"]  # fmt: skip
    if args.model:
        command += ["--model", args.model]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def _engine_seconds(out: Path, args: argparse.Namespace, model, codec) -> float:
    import numpy as np

    from napari_diffinfinite import engine
    from napari_diffinfinite.slide.masks import CanvasMask

    size = (args.size, args.size)
    mask = CanvasMask(np.ones((1, 1), np.uint8), shape=size)
    settings = engine.GenerateSettings(steps=args.steps, seed=0, device=args.device)
    started = time.perf_counter()
    engine.generate_slide(out, size, image_model=model, codec=codec, mask=mask, settings=settings)
    return time.perf_counter() - started


def _open_panel(args: argparse.Namespace):
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    _dock, panel = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "DiffInfinite")
    checkpoints = panel.checkpoints
    checkpoints.image_path.set_value(args.model or "")
    checkpoints.use_mask.setChecked(False)
    checkpoints.device.setCurrentText(args.device)
    checkpoints.load()
    app = QApplication.instance()
    while checkpoints.worker is not None or panel.generate._calibration_worker is not None:
        app.processEvents()
        time.sleep(0.01)
    canvas = panel.canvas
    canvas.set_slide_shape(args.size, args.size)
    canvas.create_canvas(fill=1)
    generate = panel.show_step("Generate")
    generate.steps.setValue(args.steps)
    generate.seed.setValue(0)
    generate.ask = lambda title, text, answers: "Overwrite" if "Overwrite" in answers else answers[0]
    return viewer, panel


def _widget_seconds(out: Path, panel) -> float:
    from qtpy.QtCore import QEventLoop

    generate = panel.generate
    generate.output.set_value(str(out))
    loop = QEventLoop()
    started = time.perf_counter()
    worker = generate.generate()
    if worker is None:
        raise RuntimeError(f"Generate refused to start: {generate.status.text()}")
    worker.finished.connect(loop.quit)
    if generate.worker is not None:
        loop.exec()
    elapsed = time.perf_counter() - started
    if not generate.status.text().startswith("Done"):
        raise RuntimeError(f"the widget ended with {generate.status.text()!r}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="slide side in pixels (default 512)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    p.add_argument("--model", default="", help="image model folder (default: the embedded demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("no display: run under xvfb-run -a -s '-screen 0 1920x1200x24'", file=sys.stderr)
        return 2

    from napari_diffinfinite import engine

    model = engine.load_image_model(args.model or None, device=args.device)
    codec = engine.load_codec(None, model, device=args.device)
    times: dict[str, list[float]] = {"cli": [], "engine": [], "widget": []}
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp:
        root = Path(tmp)
        _engine_seconds(root / "warmup.zarr", args, model, codec)  # first-call costs out of the way
        viewer, panel = _open_panel(args)
        _widget_seconds(root / "warmup-widget.zarr", panel)
        for k in range(args.repeats):
            times["cli"].append(_cli_seconds(root / f"cli-{k}.zarr", args))
            times["engine"].append(_engine_seconds(root / f"engine-{k}.zarr", args, model, codec))
            times["widget"].append(_widget_seconds(root / f"widget-{k}.zarr", panel))
        viewer.close()
    median = {key: statistics.median(values) for key, values in times.items()}
    record = {
        "job": {"size": args.size, "steps": args.steps, "model": args.model or "embedded demo", "device": args.device},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "samples_s": {k: [round(v, 3) for v in values] for k, values in times.items()},
        "widget_over_engine": round(median["widget"] / median["engine"], 3),
        "widget_over_cli": round(median["widget"] / median["cli"], 3),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "display": os.environ.get("DISPLAY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
