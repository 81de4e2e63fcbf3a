"""Generate widget: a 1024 x 1024 slide with a tiny model streams into a multiscale layer;
Cancel stops the worker within a batch and Resume finishes the same slide."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite.widgets._canvas import MaskCanvasWidget  # noqa: E402
from napari_diffinfinite.widgets._checkpoint import CheckpointWidget  # noqa: E402
from napari_diffinfinite.widgets._generate import PREVIEW_NAME, GenerateWidget  # noqa: E402

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
    generate.ask = refuse_questions
    return generate, canvas


def refuse_questions(title, text, answers):
    raise AssertionError(f"unexpected question: {title}: {text}")


def test_layout_from_the_mask_model(ready, qtbot):
    _, canvas = ready
    canvas.set_slide_shape(512, 512)  # the mask sampler goes patch by patch: keep it small
    canvas.seed.setValue(3)
    canvas.layout_steps.setValue(2)
    assert canvas.sample_layout() is not None
    _wait(qtbot, canvas)
    layer = canvas.layer
    assert layer.data.dtype == np.uint8 and layer.data.shape[0] < 512
    px = canvas.state.pixel_size_um
    assert px == 0.5  # the tiny model's pixel size: the canvas is placed in µm
    np.testing.assert_allclose(np.asarray(layer.scale) * layer.data.shape, (512 * px, 512 * px))
    # the description says what the canvas is now, not what it was before sampling
    assert f"{layer.data.shape[1]:,} × {layer.data.shape[0]:,} px" in canvas.canvas_info.text()
    assert canvas.state.mask_source().shape == (512, 512)
    assert int(layer.data.max()) < len(canvas.state.class_names)


def test_a_sampled_canvas_keeps_its_provenance_until_painted(ready, qtbot):
    """napari recorded a sampled layout as {"type": "canvas"}; the CLI records the mask model,
    condition, omega, seed and steps. Now the GUI does too, and says when it was painted over."""
    generate, canvas = ready
    canvas.set_slide_shape(512, 512)
    canvas.seed.setValue(9)
    canvas.layout_steps.setValue(2)
    canvas.condition.setCurrentIndex(canvas.condition.findData(0))
    assert canvas.sample_layout() is not None
    _wait(qtbot, canvas)
    info = generate.request(generate.output_path()).layout.info
    assert info["type"] == "sampled" and info["mask_model"]["sha256"] == canvas.state.mask_model.sha256
    assert (info["condition"], info["condition_name"], info["seed"], info["steps"], info["omega"]) == (
        0, "any", 9, 2, 0.0,
    )  # fmt: skip
    canvas.layer.data[0, 0] = 2 if canvas.layer.data[0, 0] != 2 else 1  # a brush stroke
    painted = generate.request(generate.output_path()).layout.info
    assert painted["type"] == "canvas" and painted["painted_over"]["seed"] == 9
    canvas.create_canvas()
    assert generate.request(generate.output_path()).layout.info == {"type": "canvas"}


@pytest.mark.slow
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
    # slide, its labels and the canvas all in µm: they overlay exactly
    for layer in (image, viewer.layers["slide labels"]):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    canvas_layer = generate.state.canvas_layer
    np.testing.assert_allclose(canvas_layer.data_to_world((0, 0)), image.data_to_world((7.5, 7.5)))
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


@pytest.mark.slow
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


@pytest.mark.parametrize("hook", ["napari task manager", "Qt close event"])
def test_closing_napari_cancels_the_running_job_and_waits_for_it(ready, qtbot, viewer, tmp_path, monkeypatch, hook):
    """Closing the window mid-job stops the job before the window is gone (it used to run on
    and report to deleted widgets: a segfault when napari exited) and leaves the store resumable.
    Through napari's private task manager (0.9), or, where a napari lacks it, the window's Close event."""
    from napari_diffinfinite.slide.store import SlideStore
    from napari_diffinfinite.widgets import _generate
    from napari_diffinfinite.widgets._threading import ProgressRelay

    generate, _ = ready
    viewer.window.add_dock_widget(generate)  # docked, as the plugin's panel is
    if hook == "Qt close event":
        from napari_diffinfinite.widgets import _threading

        monkeypatch.setattr(_threading, "_task_manager", lambda viewer: None)
    generate.steps.setValue(3)
    ended = threading.Event()
    run = _generate.run_generation

    def tracked(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            ended.set()

    relay = ProgressRelay.__call__

    def held(self, event):  # hold the job mid-sampling until something cancels it
        relay(self, event)
        token = generate.cancel_token
        if event.stage == "sample" and token is not None:
            for _ in range(600):
                if token.cancelled:
                    break
                threading.Event().wait(0.1)

    monkeypatch.setattr(_generate, "run_generation", tracked)
    monkeypatch.setattr(ProgressRelay, "__call__", held)
    assert generate.generate() is not None
    qtbot.waitUntil(lambda: generate.progress.stage == "sample", timeout=TIMEOUT_MS)
    viewer.close()
    assert ended.is_set(), "the job was still running when the window had closed"
    store = SlideStore.open(tmp_path / "slide.zarr")
    assert store.provenance["complete"] is False
    assert store.load_state() is not None


@pytest.mark.slow
def test_ten_small_slides_in_a_row_all_end_done(ready, qtbot, viewer, tmp_path, notifications):
    """Driven without napari.run(): every generation ends "Done", its progress events are
    applied in order and once, and nothing shows an error (the old activity-bar race left
    "Decoding tiles 75%" and a traceback toast behind)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    generate, canvas = ready
    canvas.set_slide_shape(256, 256)
    canvas.downsample.setCurrentIndex(canvas.downsample.findData(8))
    canvas.create_canvas(fill=1)
    generate.steps.setValue(1)
    before = len(notification_manager.records)
    applied: list[list[tuple[str, int]]] = []
    original = generate.progress.update

    def record(event):
        shown = original(event)
        if shown:
            applied[-1].append((event.stage, event.done))
        return shown

    generate.progress.update = record
    for k in range(10):
        applied.append([])
        generate.output.set_value(str(tmp_path / f"slide-{k}.zarr"))
        assert generate.generate() is not None
        _wait(qtbot, generate)
        qtbot.wait(20)  # let any straggling queued event arrive
        assert generate.status.text().startswith("Done"), (k, generate.status.text())
        assert not generate.progress.active and generate.progress_bar.value() == 0
        stages = [stage for stage, _ in applied[-1]]
        assert "sample" in stages and "decode" in stages
        order = {"pyramid": 0, "sample": 1, "decode": 2}
        assert [order[s] for s in stages] == sorted(order[s] for s in stages), stages
        for stage in set(stages):
            done = [d for s, d in applied[-1] if s == stage]
            assert done == sorted(done), (stage, done)
    errors = [n for n in notification_manager.records[before:] if n.severity >= NotificationSeverity.WARNING]
    assert not errors, [str(n.message) for n in errors]
    assert not [n for n in notifications if n[0] == "error"], notifications


@pytest.mark.slow
def test_existing_output_path_asks_and_does_not_fail(ready, qtbot, tmp_path, notifications):
    from napari_diffinfinite.slide.store import SlideStore

    generate, canvas = ready
    canvas.set_slide_shape(256, 256)
    canvas.create_canvas(fill=1)
    generate.steps.setValue(1)
    out = tmp_path / "slide.zarr"
    out.mkdir()  # a remembered path from an earlier session, say
    asked = []

    def answer(title, text, answers):
        asked.append((title, text, list(answers)))
        return answers[0]

    generate.ask = answer
    assert generate.generate() is not None
    _wait(qtbot, generate)
    title, text, answers = asked[-1]
    assert "already exists" in text and answers == ["Save as slide-2.zarr", "Overwrite", "Cancel"]
    assert generate.status.text().startswith("Done"), generate.status.text()
    assert SlideStore.open(tmp_path / "slide-2.zarr").provenance["complete"] is True
    assert generate.output.value() == str(tmp_path / "slide-2.zarr")  # the form shows the new name

    generate.ask = lambda title, text, answers: "Overwrite"
    assert generate.generate() is not None
    _wait(qtbot, generate)
    assert generate.status.text().startswith("Done"), generate.status.text()
    generate.ask = lambda title, text, answers: "Cancel"
    assert generate.generate() is None and generate.worker is None
    assert not [n for n in notifications if n[0] == "error"], notifications


def test_a_path_that_cannot_be_overwritten_is_not_offered_and_the_status_says_the_latest(
    ready, qtbot, tmp_path, notifications
):
    """A plain file at the output path was offered for Overwrite and refused after; and the
    status line kept that refusal while later attempts failed for other reasons."""
    generate, canvas = ready
    afile = tmp_path / "afile.zarr"
    afile.write_text("not a store")
    generate.output.set_value(str(afile))
    asked = []

    def answer(title, text, answers):
        asked.append((text, list(answers)))
        return "Cancel"

    generate.ask = answer
    assert generate.generate() is None
    text, answers = asked[-1]
    assert answers == ["Save as afile-2.zarr", "Cancel"] and "cannot be overwritten" in text, asked
    assert afile.read_text() == "not a store"

    generate.output.set_value(str(tmp_path / "missing.zarr"))
    assert generate.resume() is None
    assert generate.status.text().startswith("Cannot start") and "missing.zarr" in generate.status.text()
    canvas.viewer.layers.clear()  # no mask canvas any more
    generate.output.set_value(str(tmp_path / "new.zarr"))
    assert generate.generate() is None
    assert generate.status.text().startswith("Cannot start") and "missing.zarr" not in generate.status.text()


def test_estimate_shown_and_long_jobs_need_confirmation(ready, qtbot):
    from napari_diffinfinite.widgets._estimate import Calibration

    generate, canvas = ready
    qtbot.waitUntil(lambda: generate.calibration is not None, timeout=TIMEOUT_MS)
    assert generate.estimate.text().startswith("Estimated time: about"), generate.estimate.text()
    assert "1,024 × 1,024 px in 2 steps" in generate.estimate.text()
    # a slow device: the default 16384 x 16384 px slide would take hours
    generate.calibration = Calibration(seconds_per_patch=0.05, seconds_per_tile=1.0, patch=32, scale_factor=4,
                                       device="cpu")  # fmt: skip
    canvas.set_slide_shape(16384, 16384)
    canvas.create_canvas(fill=1)
    generate.steps.setValue(25)
    assert " h on cpu" in generate.estimate.text()
    asked = []
    generate.ask = lambda title, text, answers: asked.append(text) or "Cancel"
    assert generate.generate() is None and generate.worker is None
    assert asked and "Start it anyway?" in asked[0]


def test_too_small_a_slide_says_why(ready, notifications):
    _, canvas = ready
    canvas.set_slide_shape(100, 40)
    assert canvas.size_problem() is not None and "at least 128 px" in canvas.size_problem()
    assert not canvas.create_button.isEnabled()
    assert "too small" in canvas.canvas_info.text()
    assert canvas.create_canvas() is None
    canvas.set_slide_shape(128, 4096)
    assert canvas.size_problem() is None and canvas.create_button.isEnabled()


@pytest.mark.slow
def test_cascade_fills_the_live_view_level_by_level(ready, qtbot, viewer, tmp_path, image_model_dir):
    """A cascade file in the Generate widget: the engine samples the lower level, which the slide
    layer shows (store level 1) before the full-resolution level is decoded."""
    from napari_diffinfinite.model.config import ModelConfig
    from napari_diffinfinite.model.pretrained import load_model, new_model, save_pretrained

    low = load_model(image_model_dir)
    data = low.config.to_dict()
    condition = 3 * low.config.scale_factor**2
    data.update(cascade={"parent_scale": 2, "condition": "image"}, objective="pred_v")
    data["unet"] = {**data["unet"], "condition_channels": condition}
    save_pretrained(new_model(ModelConfig.from_dict(data), seed=1), tmp_path / "stage")
    (tmp_path / "cascade.json").write_text(f'{{"models": ["{image_model_dir}", "stage"]}}')

    generate, _ = ready
    generate.cascade.set_value(str(tmp_path / "cascade.json"))
    shown: list[str] = []
    coarse: list[int] = []
    original = generate._on_progress

    def spy(event):
        original(event)
        if event.stage == "decode":
            shown.append(event.message)
        if event.stage == "sample" and event.message.startswith("level 2/2") and not coarse:
            # the higher level is sampling: the slide layer already shows the lower one at level 1
            layer = viewer.layers["slide"]
            coarse.append(int(np.asarray(layer.data[1]).max()))

    generate._on_progress = spy
    assert generate.generate() is not None
    _wait(qtbot, generate)
    assert "Done" in generate.status.text(), generate.status.text()
    assert shown[0].startswith("level 1/2") and shown[-1].startswith("level 2/2")
    assert coarse and coarse[0] > 0
    from napari_diffinfinite.slide.store import SlideStore

    store = SlideStore.open(tmp_path / "slide.zarr")
    assert [lv["downscale"] for lv in store.provenance["cascade"]] == [2, 1]


def test_the_widget_job_adapts_torch_threads_as_the_cli_does(monkeypatch):
    """The napari job picks and adapts its CPU threads like `diffinfinite generate` (it once ran
    with torch's default, one thread per logical CPU, which collapses on a shared machine)."""
    from napari_diffinfinite import engine, threads
    from napari_diffinfinite.progress import ProgressEvent
    from napari_diffinfinite.widgets._generate import run_generation

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "max_sampling_threads", lambda max_threads=threads.MAX_THREADS: 2)
    monkeypatch.setattr(threads, "sampling_threads", lambda *a, **k: 1)
    seen, passed = [], []

    def fake_run_generate(request, progress=None, cancel=None):
        seen.append(progress)
        progress(ProgressEvent("sample", 1, 10, "step 1/10"))

    monkeypatch.setattr(engine, "run_generate", fake_run_generate)
    import torch

    before = torch.get_num_threads()
    try:
        run_generation(type("Request", (), {"path": "x.zarr"})(), progress=passed.append)
    finally:
        torch.set_num_threads(before)
    assert isinstance(seen[0], threads.AdaptiveThreads)
    assert [e.done for e in passed] == [1]  # the widget's own callback still gets every event


def test_guidance_follows_the_loaded_models_default(ready, qtbot):
    """ω takes the loaded model's ``default_omega`` (the demo's 2) and goes back to 3 for a model
    without one, as the engine does when no ω is given."""
    generate, _canvas = ready
    qtbot.waitUntil(lambda: generate._calibration_worker is None, timeout=TIMEOUT_MS)  # nothing left running
    assert generate.omega.value() == 3.0  # the tiny test model has no default_omega
    model = generate.state.image_model
    config = model.config
    model.config = dataclasses.replace(config, default_omega=1.5)
    generate._on_models_changed()
    assert generate.omega.value() == 1.5
    model.config = config
    generate._on_models_changed()
    assert generate.omega.value() == 3.0
    qtbot.waitUntil(lambda: generate._calibration_worker is None, timeout=TIMEOUT_MS)
