"""Tiny random-init diffusers pipelines built in the tests (no download), saved as safetensors folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

CLASSES = {"class_names": ["unknown", "tumour", "stroma"], "class_colors": [[0, 0, 0], [200, 30, 60], [40, 160, 80]]}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models' operations are far too small to share between threads, and on a busy
    machine two OpenMP threads wait on each other (measured: 4 s instead of 0.08 s per forward)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny Stable Diffusion pipeline folder (epsilon prediction, DDIM config as SD's), with three classes."""
    from napari_diffinfinite.diffusers_backend.tiny import write_tiny_pipeline

    folder = write_tiny_pipeline(tmp_path_factory.mktemp("diffusers") / "pipeline")
    (folder / "diffinfinite.json").write_text(json.dumps(CLASSES))
    return folder


@pytest.fixture(scope="session")
def tiny_v_pipeline(tiny_pipeline, tmp_path_factory):
    """The same pipeline predicting v (its scheduler config says so)."""
    folder = tmp_path_factory.mktemp("diffusers") / "pipeline-v"
    shutil.copytree(tiny_pipeline, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory):
    from napari_diffinfinite.diffusers_backend.tiny import write_tiny_controlnet

    return write_tiny_controlnet(tmp_path_factory.mktemp("diffusers") / "controlnet", classes=CLASSES)


@pytest.fixture(scope="session")
def tiny_lora(tiny_pipeline, tmp_path_factory):
    pytest.importorskip("peft")
    from napari_diffinfinite.diffusers_backend.tiny import write_tiny_lora

    return write_tiny_lora(tiny_pipeline, tmp_path_factory.mktemp("diffusers") / "lora")
