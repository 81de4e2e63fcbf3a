"""Generate widget: a 1024 x 1024 slide with a tiny model streams into a multiscale layer;
Cancel stops the worker within a batch and Resume finishes the same slide."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_diffinfinite.widgets._canvas import MaskCanvasWidget
from napari_diffinfinite.widgets._checkpoint import CheckpointWidget
from napari_diffinfinite.widgets._generate import PREVIEW_NAME, GenerateWidget

pytestmark = pytest.mark.gui

SIZE = (1024, 1024)
TIMEOUT_MS = 180_000


def _wait(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


@pytest.fixture
def ready(viewer, qtbot, tmp_path, image_model_dir, mask_model_dir):
    """Viewer with the tiny models loaded, a painted canvas and a Generate widget."""
    checkpoints = CheckpointWidget(viewer)
    checkpoints.image_path.set_value(str(image_model_dir))
    checkpoints.mask_path.set_value(str(mask_model_dir))
    checkpoints.use_mask.setChecked(True)
    checkpoints.load()
    _wait(qtbot, checkpoints)
    assert checkpoints.state.image_model is not None

    canvas = MaskCanvasWidget(viewer)
    canvas.set_slide_shape(*SIZE)
    canvas.downsample.setCurrentIndex(canvas.downsample.findData(16))  # 64 x 64 canvas
    layer = canvas.create_canvas()
    canvas.fill(1)
    layer.data[:, 40:] = 2  # "painting" a band of class 2: slide columns 640..1023
    layer.refresh()

    generate = GenerateWidget(viewer)
    generate.output.set_value(str(tmp_path / "slide.zarr"))
    generate.steps.setValue(2)
    generate.batch_size.setValue(1024)  # few large forward calls: fastest on a CPU
    return generate, canvas


def test_layout_from_the_mask_model(ready, qtbot):
    _, canvas = ready
    canvas.set_slide_shape(512, 512)  # the mask sampler goes patch by patch: keep it small
    canvas.seed.setValue(3)
    canvas.layout_steps.setValue(2)
    assert canvas.sample_layout() is not None
    _wait(qtbot, canvas)
    layer = canvas.layer
    assert layer.data.dtype == np.uint8 and layer.data.shape[0] < 512
    np.testing.assert_allclose(np.asarray(layer.scale) * layer.data.shape, (512, 512))
    assert canvas.state.mask_source().shape == (512, 512)
    assert int(layer.data.max()) < len(canvas.state.class_names)


def test_generate_streams_a_multiscale_slide(ready, qtbot, viewer, tmp_path):
    from napari_diffinfinite.slide.pyramid import level_shapes
    from napari_diffinfinite.slide.store import SlideStore

    generate, _ = ready
    seen: list[str] = []
    previews: list[tuple] = []
    original = generate._on_progress

    def spy(event):
        seen.append(event.stage)
        if event.preview is not None:
            previews.append(event.preview.shape)
        original(event)

    generate._on_progress = spy  # the relay connects at Generate time
    assert generate.generate() is not None
    _wait(qtbot, generate)
    assert "Done" in generate.status.text(), generate.status.text()

    image = viewer.layers["slide"]
    assert image.multiscale and image.rgb
    assert [tuple(level.shape) for level in image.data] == [(h, w, 3) for h, w in level_shapes(SIZE)]
    assert PREVIEW_NAME not in viewer.layers  # the preview stood in while sampling
    assert image.thumbnail[..., :3].max() > 0  # the layer list shows the slide, not black
    assert {"sample", "decode"} <= set(seen) and seen.index("sample") < seen.index("decode")
    assert previews and all(len(s) == 3 and s[2] == 3 for s in previews)

    store = SlideStore.open(tmp_path / "slide.zarr")
    assert store.provenance["complete"] is True
    np.testing.assert_array_equal(np.asarray(image.data[0][200:300, 700:800]), store.read_region(0, 200, 300, 700, 800))
    # the painted canvas is the mask the engine used
    labels = viewer.layers["slide labels"]
    level0 = np.asarray(labels.data[0][:, :])
    assert (level0[:, :640] == 1).all() and (level0[:, 640:] == 2).all()
    assert generate.state.store_path == tmp_path / "slide.zarr"


def test_cancel_then_resume_finishes_the_same_slide(ready, qtbot, viewer, tmp_path, monkeypatch):
    from napari_diffinfinite import engine
    from napari_diffinfinite.slide.store import SlideStore

    from napari_diffinfinite.widgets._threading import ProgressRelay

    generate, _ = ready
    generate.steps.setValue(3)
    # hold the engine at its first sampling report until Cancel has been pressed, so the
    # cancel lands mid-sampling however fast the machine is
    pressed = threading.Event()
    relay = ProgressRelay.__call__

    def held(self, event):
        relay(self, event)
        if event.stage == "sample":
            pressed.wait(timeout=60)

    monkeypatch.setattr(ProgressRelay, "__call__", held)
    assert generate.generate() is not None
    qtbot.waitUntil(lambda: generate.progress.stage == "sample", timeout=TIMEOUT_MS)
    generate.cancel_button.click()
    pressed.set()
    _wait(qtbot, generate)
    assert "Cancelled" in generate.status.text(), generate.status.text()
    store = SlideStore.open(tmp_path / "slide.zarr")
    assert store.provenance["complete"] is False
    assert store.load_state() is not None
    monkeypatch.setattr(ProgressRelay, "__call__", relay)

    assert generate.resume() is not None
    _wait(qtbot, generate)
    assert "Done" in generate.status.text(), generate.status.text()
    assert SlideStore.open(tmp_path / "slide.zarr").provenance["complete"] is True

    # an uninterrupted run with the same settings gives the same slide
    state = generate.state
    reference = engine.generate_slide(
        tmp_path / "reference.zarr", SIZE, image_model=state.image_model, codec=state.image_codec,
        mask=state.mask_source(), settings=generate.settings(),
    )  # fmt: skip
    resumed = SlideStore.open(tmp_path / "slide.zarr")
    np.testing.assert_array_equal(resumed.image_level(0)[:], reference.image_level(0)[:])
    image = viewer.layers["slide"]
    np.testing.assert_array_equal(np.asarray(image.data[1][:, :]), np.moveaxis(reference.image_level(1)[:], 0, -1))
