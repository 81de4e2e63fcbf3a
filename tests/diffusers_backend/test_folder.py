"""Pipeline folders: found and checked before loading, pickles refused without being run, LoRA
weights applied, ``diffinfinite info`` describes them."""

from __future__ import annotations

import json
import pickle
import shutil
import sys

import pytest
import torch

from napari_diffinfinite.diffusers_backend.model import DiffusersOptions, describe_pipeline, load_diffusers
from napari_diffinfinite.errors import CheckpointError, SettingsError


class _WritesSentinel:
    """A pickle whose loading would create a file (what a malicious checkpoint does)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(path, sentinel) -> None:
    path.write_bytes(pickle.dumps(_WritesSentinel(str(sentinel))))


def test_pickled_weights_are_refused_without_running_them(tiny_pipeline, tmp_path):
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline, folder)
    for file in (folder / "unet").glob("*.safetensors"):
        file.unlink()
    _malicious(folder / "unet" / "diffusion_pytorch_model.bin", sentinel)
    with pytest.raises(CheckpointError, match=r"pickled weights \(diffusion_pytorch_model.bin\).*refused"):
        load_diffusers(DiffusersOptions(pipeline=folder))
    ckpt = tmp_path / "model.ckpt"
    _malicious(ckpt, sentinel)
    with pytest.raises(CheckpointError, match="pickle"):
        load_diffusers(DiffusersOptions(pipeline=ckpt))
    with pytest.raises(CheckpointError, match="pickle"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, lora=ckpt))
    controlnet = tmp_path / "cn"
    controlnet.mkdir()
    (controlnet / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    _malicious(controlnet / "diffusion_pytorch_model.bin", sentinel)
    with pytest.raises(CheckpointError, match="pickle"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, controlnet=controlnet))
    assert not sentinel.exists()


def test_not_a_pipeline_and_bad_options_are_refused(tiny_pipeline, tmp_path):
    with pytest.raises(CheckpointError, match=r"lacks unet/, vae/"):
        load_diffusers(DiffusersOptions(pipeline=tmp_path))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        load_diffusers(DiffusersOptions(pipeline="someone/not-in-the-cache"))
    with pytest.raises(SettingsError, match="unknown scheduler"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, scheduler="euler"))
    with pytest.raises(SettingsError, match="no such class"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, class_prompts={"fat": "adipocytes"}))
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_pipeline, damaged)
    weights = next((damaged / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_diffusers(DiffusersOptions(pipeline=damaged))


def test_lora_changes_the_network_and_is_recorded(tiny_pipeline, tiny_lora):
    plain, _ = load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, prompt="tissue"))
    lora, _ = load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, prompt="tissue", lora=tiny_lora))
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    rows, labels = torch.zeros(2, dtype=torch.long), torch.zeros(2, 32, 32, dtype=torch.uint8)
    with torch.no_grad():
        assert (plain.unet(x, t, rows, labels) - lora.unet(x, t, rows, labels)).abs().max() > 1e-3
    record = lora.provenance(omega=4.0, steps=10, eta=0.0)
    assert record["lora"]["path"] == str(tiny_lora) and len(record["lora"]["sha256"]) == 64
    assert lora.sha256 != plain.sha256
    assert record["guidance_scale"] == 5.0 and record["prompt"] == "tissue"


def test_info_describes_pipeline_and_controlnet(tiny_pipeline, tiny_controlnet):
    info = describe_pipeline(tiny_pipeline)
    assert info["type"] == "diffusers pipeline" and info["patch_size"] == 256 and info["latent_patch"] == 32
    assert info["classes"] == {"0": "unknown", "1": "tumour", "2": "stroma"}
    assert info["weights"]["unet"] == "safetensors" and len(info["sha256"]) == 64
    cn = describe_pipeline(tiny_controlnet)
    assert cn["type"] == "diffusers ControlNet" and cn["conditioning"] == "colors"


def test_missing_libraries_are_named_with_the_extra(tiny_pipeline, tiny_lora, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(
        CheckpointError, match=r"LoRA weights need peft.*pip install 'napari-diffinfinite\[diffusers\]'"
    ):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, lora=tiny_lora))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CheckpointError, match="diffusers pipelines need transformers"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline))


def test_a_model_id_is_found_in_the_local_hugging_face_cache(tiny_pipeline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from napari_diffinfinite.diffusers_backend.folder import check_pipeline

    cache = tmp_path / "hub"
    repo = cache / "models--lab--tiny-pathology-sd"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_pipeline, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_pipeline("lab/tiny-pathology-sd").path == snapshot
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        check_pipeline("lab/not-cached")
