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
