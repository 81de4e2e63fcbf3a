"""A diffusers pipeline in napari: the Checkpoints widget loads a tiny pipeline + ControlNet, the
Generate widget takes a prompt and per-class prompts and generates a small slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("diffusers")

from napari_diffinfinite.widgets._canvas import MaskCanvasWidget  # noqa: E402
from napari_diffinfinite.widgets._checkpoint import CheckpointWidget  # noqa: E402
from napari_diffinfinite.widgets._generate import GenerateWidget  # noqa: E402

pytestmark = pytest.mark.gui

CLASSES = {"class_names": ["unknown", "tumour", "stroma"], "class_colors": [[0, 0, 0], [200, 30, 60], [40, 160, 80]]}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: one thread (two OpenMP threads wait on each other on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_diffusers(tmp_path_factory):
    from napari_diffinfinite.diffusers_backend.tiny import write_tiny_controlnet, write_tiny_pipeline

    root = tmp_path_factory.mktemp("diffusers-gui")
    pipeline = write_tiny_pipeline(root / "pipeline")
    controlnet = write_tiny_controlnet(root / "controlnet", classes=CLASSES)
    (pipeline / "diffinfinite.json").write_text(json.dumps(CLASSES))
    return pipeline, controlnet


@pytest.mark.slow
def test_load_a_pipeline_and_generate_with_prompts(viewer, qtbot, tmp_path, tiny_diffusers):
    from napari_diffinfinite.slide.store import SlideStore

    pipeline, controlnet = tiny_diffusers
    checkpoints = CheckpointWidget(viewer)
    checkpoints.family.setCurrentText("diffusers")
    assert checkpoints.image_path.isHidden() is False and checkpoints.diffinfinite_box.isHidden()
    checkpoints.pipeline_path.set_value(str(pipeline))
    checkpoints.controlnet_path.set_value(str(controlnet))
    checkpoints.load()
    qtbot.waitUntil(lambda: checkpoints.worker is None, timeout=120_000)
    assert checkpoints.state.image_info["family"] == "diffusers"
    assert checkpoints.shown_class_names() == ["unknown", "tumour", "stroma"]

    canvas = MaskCanvasWidget(viewer)
    canvas.set_slide_shape(256, 384)
    canvas.create_canvas()
    canvas.fill(1)
    canvas.layer.data[:, canvas.layer.data.shape[1] // 2 :] = 2
    canvas.layer.refresh()

    generate = GenerateWidget(viewer)
    assert not generate.prompt_box.isHidden() and not generate.class_prompts.isHidden()
    assert generate.omega.value() == 6.5 and generate.eta.value() == 0.0
    qtbot.waitUntil(lambda: generate._calibration_worker is None, timeout=120_000)  # the time estimate
    assert generate.calibration is not None
    generate.output.set_value(str(tmp_path / "slide.zarr"))
    generate.steps.setValue(2)
    generate.prompt.setText("H&E, colon")
    generate.negative_prompt.setText("blurry")
    generate.class_prompts.item(2, 1).setText("loose stroma")
    assert generate.generate() is not None
    qtbot.waitUntil(lambda: generate.worker is None, timeout=180_000)
    assert "Done" in generate.status.text(), generate.status.text()

    store = SlideStore.open(tmp_path / "slide.zarr")
    d = store.provenance["diffusers"]
    assert d["prompt"] == "H&E, colon" and d["negative_prompt"] == "blurry"
    assert d["class_prompts"] == {"2": "loose stroma"} and d["controlnet"]["path"] == str(controlnet)
    assert tuple(store.shape) == (256, 384)
    layer = viewer.layers["slide"]
    level0 = layer.data[0] if layer.multiscale else layer.data
    np.testing.assert_array_equal(np.asarray(level0), store.read_region(0, 0, 256, 0, 384))
