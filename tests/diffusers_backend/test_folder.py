"""Pipeline folders: found and checked before loading, pickles refused without being run, LoRA
weights applied, ``diffinfinite info`` describes them."""

from __future__ import annotations

import json
import pickle
import re
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


def _copy(pipeline, tmp_path, name: str = "copy"):
    folder = tmp_path / name
    shutil.copytree(pipeline, folder)
    return folder


def _edit(path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"num_train_timesteps": 10**8}, "num_train_timesteps must be between 1 and 10000"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be between 1 and 10000"),
        ({"num_train_timesteps": -5}, "num_train_timesteps must be between 1 and 10000"),
        ({"num_train_timesteps": "abc"}, "num_train_timesteps must be an integer"),
        ({"beta_schedule": "bogus"}, "beta_schedule must be one of"),
        ({"prediction_type": "bogus"}, "prediction_type must be one of 'epsilon', 'v_prediction', 'sample'"),
        ({"timestep_spacing": "bogus"}, "timestep_spacing must be one of"),
        ({"steps_offset": 10**9}, "steps_offset must be between 0 and 10"),
        ({"beta_end": 5.0}, "0 < beta_start < beta_end < 1"),
        ({"beta_start": 0.02, "beta_end": 0.001}, "0 < beta_start < beta_end < 1"),
        ({"clip_sample": "yes"}, "clip_sample must be true or false"),
        ({"trained_betas": [0.5]}, "trained_betas must be null or a list of num_train_timesteps numbers"),
        ({"thresholding": True}, "thresholding must be false"),
        ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 500}, "solver_order must be between 1 and 3"),
        ({"algorithm_type": "bogus"}, "algorithm_type must be one of"),
    ],
)
def test_bad_scheduler_configs_are_refused_naming_file_and_field(tiny_pipeline, tmp_path, fields, problem):
    from napari_diffinfinite.diffusers_backend.folder import check_pipeline

    folder = _copy(tiny_pipeline, tmp_path)
    _edit(folder / "scheduler" / "scheduler_config.json", **fields)
    with pytest.raises(CheckpointError, match=r"scheduler_config\.json: .*" + re.escape(problem)):
        check_pipeline(folder)  # what generate (load_diffusers) and info (describe_pipeline) check first


def test_diffusers_own_scheduler_configs_pass(tmp_path):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    from napari_diffinfinite.diffusers_backend.schedule import scheduler_config_problems

    for scheduler in (DDIMScheduler(), DPMSolverMultistepScheduler(), PNDMScheduler(steps_offset=1)):
        scheduler.save_config(tmp_path)  # DPM-Solver writes lambda_min_clipped: -Infinity
        config = json.loads((tmp_path / "scheduler_config.json").read_text())
        assert scheduler_config_problems(config) == []


def test_tokenizer_max_length_is_clamped_to_the_text_encoders_positions(tiny_pipeline, tmp_path):
    from napari_diffinfinite.diffusers_backend.tiny import MAX_TOKENS

    folder = _copy(tiny_pipeline, tmp_path)
    _edit(folder / "tokenizer" / "tokenizer_config.json", model_max_length=10_000)  # 10**8 once padded to 6.8 GB
    model, _ = load_diffusers(DiffusersOptions(pipeline=folder, prompt="tissue"))
    assert model.pipe.tokenizer.model_max_length == MAX_TOKENS
    assert model.prompts.embeddings.shape[1] == MAX_TOKENS
    _edit(folder / "tokenizer" / "tokenizer_config.json", model_max_length="long")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: model_max_length must be a positive integer"):
        load_diffusers(DiffusersOptions(pipeline=folder))
    _edit(folder / "text_encoder" / "config.json", max_position_embeddings=10**6)
    with pytest.raises(CheckpointError, match=r"text_encoder/config\.json: max_position_embeddings must be between"):
        load_diffusers(DiffusersOptions(pipeline=folder))


def _poison(file, value: float = float("nan")) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(file))
    name = sorted(weights)[-1]
    weights[name][...] = value
    save_file(weights, str(file))


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "controlnet", "lora"])
def test_nan_or_infinite_weights_are_refused(tiny_pipeline, tiny_controlnet, tiny_lora, tmp_path, component):
    folder = _copy(tiny_pipeline, tmp_path)
    options = DiffusersOptions(pipeline=folder)
    if component == "controlnet":
        options.controlnet = _copy(tiny_controlnet, tmp_path, "cn")
        _poison(next(options.controlnet.glob("*.safetensors")), float("inf"))
    elif component == "lora":
        options.lora = tmp_path / "lora.safetensors"
        shutil.copy(tiny_lora, options.lora)
        _poison(options.lora)
    else:
        _poison(next((folder / component).glob("*.safetensors")))
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        load_diffusers(options)


def test_loras_that_change_nothing_are_refused(tiny_pipeline, tiny_lora, tmp_path):
    from safetensors.torch import load_file, save_file

    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, lora=empty))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"transformer." + k: v for k, v in load_file(str(tiny_lora)).items()}, str(foreign))
    with pytest.raises(CheckpointError, match="none of the weights of the LoRA .* belong to this pipeline"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, lora=foreign))


@pytest.mark.parametrize("value", ["true", "1e-300", "-1", "NaN", '"0.5"', "1e9"])
def test_bad_pixel_size_in_diffinfinite_json_is_refused(tiny_pipeline, tmp_path, value):
    from napari_diffinfinite.diffusers_backend.folder import read_classes

    folder = _copy(tiny_pipeline, tmp_path)
    (folder / "diffinfinite.json").write_text(f'{{"pixel_size_um": {value}}}')
    with pytest.raises(CheckpointError, match=r"diffinfinite\.json: pixel_size_um must be .* micrometres"):
        describe_pipeline(folder)
    (folder / "diffinfinite.json").write_text('{"pixel_size_um": 0.5}')
    assert read_classes([folder], None, None).pixel_size_um == 0.5


@pytest.mark.parametrize(
    ("file", "content", "problem"),
    [
        ("vae/config.json", {"block_out_channels": 5}, "block_out_channels must be a list"),
        ("vae/config.json", {"scaling_factor": 0}, "scaling_factor must be a positive number"),
        ("unet/config.json", {"sample_size": []}, "sample_size must be an integer"),
        ("unet/config.json", {"sample_size": 10**6}, "sample_size must be between 1 and 1024"),
        ("unet/config.json", {"in_channels": "4"}, "in_channels must be an integer"),
        ("diffinfinite.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("scheduler/scheduler_config.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("unet/config.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
    ],
)
def test_configs_of_the_wrong_type_or_nesting_are_refused(tiny_pipeline, tmp_path, file, content, problem):
    folder = _copy(tiny_pipeline, tmp_path)
    if isinstance(content, dict):
        _edit(folder / file, **content)
    else:
        (folder / file).write_text(content)
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        describe_pipeline(folder)  # diffinfinite info
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        load_diffusers(DiffusersOptions(pipeline=folder))  # diffinfinite generate


def test_controlnet_conditioning_channels_are_checked(tiny_controlnet, tmp_path):
    folder = _copy(tiny_controlnet, tmp_path)
    _edit(folder / "config.json", conditioning_channels="3")
    with pytest.raises(CheckpointError, match=r"config\.json: conditioning_channels must be an integer"):
        describe_pipeline(folder)
