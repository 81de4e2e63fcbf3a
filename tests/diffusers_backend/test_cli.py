"""``diffinfinite generate --pipeline ...`` and ``diffinfinite info`` on diffusers folders."""

from __future__ import annotations

import json

import pytest

from napari_diffinfinite.cli import main
from napari_diffinfinite.slide.store import SlideStore


def test_generate_with_a_pipeline_and_info(tmp_path, tiny_pipeline, tiny_lora, capsys):
    out = tmp_path / "slide.zarr"
    args = ["generate", "--out", str(out), "--size", "320x256", "--pipeline", str(tiny_pipeline), "--lora",
            str(tiny_lora), "--prompt", "H&E, colorectal", "--class-prompt", "1=tumour", "--label", "1",
            "--steps", "2", "--guidance-scale", "3", "--device", "cpu", "-q"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "diffusers: DDIMScheduler, guidance 3, prompt 'H&E, colorectal'" in printed
    d = SlideStore.open(out).provenance["diffusers"]
    assert d["class_prompts"] == {"1": "tumour"} and d["lora"]["path"] == str(tiny_lora)
    assert main(["info", str(tiny_pipeline), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["type"] == "diffusers pipeline" and info["classes"]["1"] == "tumour"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "tumour"], "--prompt need a diffusers pipeline: add --pipeline FOLDER"),
        (["--pipeline", "P", "--class-prompt", "tumour"], "is not LABEL=TEXT"),
        (["--pipeline", "P", "--guidance-scale", "3", "--omega", "2"], "give one of --guidance-scale and --omega"),
    ],
)
def test_diffusers_options_are_checked(tmp_path, extra, message, capsys):
    argv = ["generate", "--out", str(tmp_path / "s.zarr"), "--size", "256x256", *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


def test_steps_beyond_an_offset_schedule_are_refused_before_writing(tmp_path, tiny_pipeline, capsys):
    """Stable Diffusion's scheduler has steps_offset 1 ("leading" spacing): as many steps as training
    timesteps indexed one past the schedule and failed mid-slide (IndexError, a store left behind)."""
    import shutil

    pipeline = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, pipeline)
    config_file = pipeline / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(num_train_timesteps=20, steps_offset=1, timestep_spacing="leading")
    config_file.write_text(json.dumps(config))
    out = tmp_path / "slide.zarr"
    args = ["generate", "--out", str(out), "--size", "256x256", "--pipeline", str(pipeline), "--label", "1",
            "--device", "cpu", "-q"]  # fmt: skip
    assert main([*args, "--steps", "20"]) == 1
    assert "steps must be between 1 and the model's 19 timesteps, got 20" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--steps", "19"]) == 0
