import json

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.cli import main
from napari_diffinfinite.slide.store import SlideStore


def test_generate_2048_with_tiny_model(tmp_path, tiny_image_model_dir, capsys):
    out = tmp_path / "slide.zarr"
    code = main(["generate", "--out", str(out), "--size", "2048x2048", "--model", str(tiny_image_model_dir),
                 "--label", "1", "--steps", "2", "--device", "cpu", "-q"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"napari {out}" in printed
    store = SlideStore.open(out)
    assert store.shape == (2048, 2048) and store.num_levels == 3 and store.provenance["complete"]
    assert (store.label_level(0)[::256, ::256] == 1).all()


def test_generate_from_label_image_and_info(tmp_path, tiny_image_model_dir, capsys):
    labels = np.zeros((20, 30), np.uint8)
    labels[:, 15:] = 2
    Image.fromarray(labels).save(tmp_path / "mask.png")
    out = tmp_path / "s.zarr"
    assert main(["generate", "--out", str(out), "--size", "600x400", "--model", str(tiny_image_model_dir),
                 "--mask", str(tmp_path / "mask.png"), "--steps", "1", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == "600x400" and info["complete"] is True and info["provenance"]["mask"]["type"] == "label image"


def test_generate_errors_are_clear(tmp_path, tiny_image_model_dir, capsys):
    args = ["generate", "--out", str(tmp_path / "x.zarr"), "--size", "256x256", "--model", str(tiny_image_model_dir)]
    assert main(args) == 1
    assert "give a layout" in capsys.readouterr().err
    assert main([*args, "--label", "9"]) == 1
    assert "label 9 is not one of the model's classes" in capsys.readouterr().err
    assert main([*args, "--label", "1", "--size", "huge"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_resume_cli(tmp_path, tiny_image_model_dir):
    out = tmp_path / "r.zarr"
    base = ["generate", "--out", str(out), "--size", "300x300", "--model", str(tiny_image_model_dir), "--steps", "1", "-q"]
    assert main([*base, "--label", "2"]) == 0
    assert main([*base, "--label", "2"]) == 1  # exists, needs --resume or --overwrite
    assert main([*base, "--resume"]) == 0  # resumes a complete store: nothing left to do


def test_convert_and_info(official_image_checkpoint, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(official_image_checkpoint), str(out), "--class-names", "unknown,tumour,stroma"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == ["unknown", "tumour", "stroma"] and info["kind"] == "image"


def test_bench_json(capsys):
    assert main(["bench", "--json", "--sizes", "512,1024", "--dim", "8", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("evals_per_step", "ideal_evals_per_step", "speedup_vs_sequential", "peak_rss_mb"):
        assert key in result
    assert result["ideal_evals_per_step"] == 4.0 and result["evals_per_step"] <= 9.0
    assert result["sizes"][0]["evals_per_step"] == 1.0  # a one-patch canvas needs one evaluation


@pytest.mark.parametrize("argv", [["--version"], ["generate", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
