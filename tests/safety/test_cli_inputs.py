"""A catalogue of bad command-line input: every case is refused with one clear line.

Each case asserts the exit code (1: refused, 2: malformed command line), that stderr is
exactly one ``diffinfinite: error: ...`` line with the expected words and no traceback, and
that nothing was left at the output path. The models are tiny random-init ones and the
sizes small, so that a case that is wrongly accepted still ends quickly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite import engine
from napari_diffinfinite.cli import main
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide.store import SlideStore


def _feature(coords, name="class 1", object_type="annotation"):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
            "properties": {"objectType": object_type, "classification": {"name": name}}}  # fmt: skip


def _square(x, y, side):
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad input files, made once."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    (d / "outside.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_feature(_square(9000, 9000, 50))]})
    )
    (d / "unknown.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature(_square(0, 0, 100), "class 1"), _feature(_square(100, 100, 50), "tumour")]}))  # fmt: skip
    (d / "broken.geojson").write_text("{ not json")
    (d / "notimage.png").write_text("this is text")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(d / "label7.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / "colour.png")
    (d / "folder").mkdir()
    (d / "afile.zarr").write_text("not a store")
    return d


def _expect_error(capsys, argv, code, *words, out=None):
    """Run ``main(argv)``; check the exit code, the one error line and that ``out`` was not created."""
    existed = out.exists() if out is not None else False
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("diffinfinite: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    if out is not None and not existed:
        assert not out.exists(), f"{out} was left behind"
    return lines[0]


def _generate(tmp_path, model_dir, *extra, size="256x256"):
    out = tmp_path / "slide.zarr"
    return out, ["generate", "--out", str(out), "--size", size, "--model", str(model_dir), "-q", "--device", "cpu",
                 *extra]  # fmt: skip


GENERATE_CASES = [
    # sizes
    (["--label", "1"], "200000x200000", 1, ["needs", "GB", "free", "--size"]),
    (["--label", "1"], "1x100000", 1, ["smaller than one patch", "at least 128x128"]),
    (["--label", "1"], "0x10", 1, ["WIDTHxHEIGHT"]),
    (["--label", "1"], "huge", 1, ["WIDTHxHEIGHT"]),
    (["--label", "1"], "10x10x10", 1, ["WIDTHxHEIGHT"]),
    (["--label", "1"], "-256x256", 2, ["--size", "expected one argument"]),
    # sampling settings
    (["--label", "1", "--steps", "0"], None, 1, ["steps must be at least 1"]),
    (["--label", "1", "--steps", "-3"], None, 1, ["steps must be at least 1"]),
    (["--label", "1", "--steps", "100000"], None, 1, ["steps", "1000"]),
    (["--label", "1", "--omega", "nan"], None, 1, ["omega", "finite"]),
    (["--label", "1", "--omega", "inf"], None, 1, ["omega", "finite"]),
    (["--label", "1", "--omega=-inf"], None, 1, ["omega", "finite"]),
    (["--label", "1", "--eta", "2"], None, 1, ["eta must be between 0"]),
    (["--label", "1", "--eta", "-0.1"], None, 1, ["eta must be between 0"]),
    (["--label", "1", "--eta", "nan"], None, 1, ["eta must be between 0"]),
    (["--label", "1", "--batch-size", "0"], None, 1, ["batch size must be at least 1"]),
    (["--label", "1", "--batch-size", "-1"], None, 1, ["batch size must be at least 1"]),
    (["--label", "1", "--seed", "-1"], None, 1, ["seed must be"]),
    (["--label", "1", "--device", "tpu9"], None, 1, ["unknown device 'tpu9'"]),
    (["--label", "1", "--device", "cuda:7"], None, 1, ["cuda:7"]),
    (["--label", "1", "--checkpoint-every", "-1"], None, 1, ["checkpoint interval"]),
    # malformed command lines (argparse)
    (["--label", "1", "--dtype", "int8"], None, 2, ["--dtype", "invalid choice"]),
    (["--label", "1", "--steps", "abc"], None, 2, ["--steps", "invalid int value"]),
    (["--label", "1", "--frobnicate"], None, 2, ["unrecognized arguments: --frobnicate"]),
    # layouts
    (["--label", "9"], None, 1, ["label 9 is not one of the model's classes"]),
    (["--label=-1"], None, 1, ["label -1 is not one of the model's classes"]),
    ([], None, 1, ["give a layout", "--mask", "--label"]),
    (["--label", "1", "--mask-model", "x"], None, 1, ["choose one layout source", "--label", "--mask-model"]),
    (["--label", "1", "--mask", "{d}/label7.png"], None, 1, ["choose one layout source"]),
    (["--mask", "{d}/empty.geojson"], None, 1, ["no area annotation"]),
    (["--mask", "{d}/outside.geojson"], None, 1, ["outside the 256x256 px slide", "--size"]),
    (["--mask", "{d}/unknown.geojson"], None, 1, ["tumour", "--skip-unknown"]),
    (["--mask", "{d}/broken.geojson"], None, 1, ["broken.geojson"]),
    (["--mask", "{d}/nothere.png"], None, 1, ["does not exist"]),
    (["--mask", "{d}/folder"], None, 1, ["is a folder"]),
    (["--mask", "{d}/notimage.png"], None, 1, ["cannot read mask file"]),
    (["--mask", "{d}/label7.png"], None, 1, ["label values the model does not have", "7"]),
    (["--mask", "{d}/colour.png"], None, 1, ["colour image"]),
    (["--label", "1", "--resume", "--overwrite"], None, 1, ["--resume", "--overwrite", "choose one"]),
]


@pytest.mark.parametrize(("extra", "size", "code", "words"), GENERATE_CASES,
                         ids=[" ".join(c[0][-2:]) + (f" size={c[1]}" if c[1] else "") for c in GENERATE_CASES])  # fmt: skip
def test_bad_generate_input(tmp_path, tiny_image_model_dir, inputs, capsys, extra, size, code, words):
    extra = [a.replace("{d}", str(inputs)) for a in extra]
    out, argv = _generate(tmp_path, tiny_image_model_dir, *extra, size=size or "256x256")
    _expect_error(capsys, argv, code, *words, out=out)


def test_skip_unknown_leaves_unknown_classes_out(tmp_path, tiny_image_model_dir, inputs, capsys):
    out, argv = _generate(tmp_path, tiny_image_model_dir, "--mask", str(inputs / "unknown.geojson"), "--skip-unknown",
                          "--steps", "1")  # fmt: skip
    assert main(argv) == 0
    mask = SlideStore.open(out).provenance["mask"]
    assert mask["painted"] == {"class 1": 1} and mask["unknown"] == {"tumour": 1}


def test_bad_model_paths(tmp_path, inputs, capsys):
    out = tmp_path / "s.zarr"
    base = ["generate", "--out", str(out), "--size", "256x256", "--label", "1", "-q", "--device", "cpu"]
    _expect_error(capsys, [*base, "--model", str(tmp_path / "missing")], 1, "does not exist", out=out)
    _expect_error(capsys, [*base, "--model", str(inputs / "folder")], 1, "config.json", out=out)
    _expect_error(capsys, [*base, "--model", str(inputs / "notimage.png")], 1, "notimage.png", out=out)


def test_bad_output_paths(tmp_path, tiny_image_model_dir, inputs, capsys):
    out = tmp_path / "nowhere" / "s.zarr"
    base = ["generate", "--label", "1", "--model", str(tiny_image_model_dir), "-q"]
    _expect_error(capsys, [*base, "--out", str(out)], 1, "does not exist", "create it first", out=out.parent)
    _expect_error(capsys, [*base, "--out", str(inputs / "afile.zarr")], 1, "is a file")
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    _expect_error(capsys, [*base, "--out", str(user), "--overwrite"], 1, "refusing to overwrite")
    assert (user / "thesis.tex").read_text() == "years of work"
    _expect_error(capsys, [*base, "--out", str(tmp_path / "n.zarr"), "--resume"], 1, "nothing to resume", "--size",
                  out=tmp_path / "n.zarr")  # fmt: skip


@pytest.fixture
def cut_store(tmp_path, tiny_image_model_dir):
    """A store interrupted during sampling (label 1, seed 0, 2 steps)."""
    out = tmp_path / "cut.zarr"
    token = CancelToken()

    def progress(event):
        if event.stage == "sample":
            token.cancel()

    request = engine.GenerateRequest(out=out, size=(256, 256), image_model=tiny_image_model_dir,
                                     layout=engine.LayoutSource(label=1),
                                     settings=engine.GenerateSettings(steps=2, device="cpu"))  # fmt: skip
    with pytest.raises(Cancelled):
        engine.run_generate(request, progress=progress, cancel=token)
    return out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--label", "2"], ["another layout", "resume without a layout option"]),
        (["--dtype", "bfloat16"], ["bfloat16", "float32", "--allow-dtype-change"]),
        (["--seed", "5"], ["seed: store 0 vs now 5"]),
        (["--steps", "3"], ["steps: store 2 vs now 3"]),
        (["--size", "512x256"], ["size: store 256x256 vs now 512x256"]),
    ],
)
def test_resume_with_changed_settings_is_refused(cut_store, tiny_image_model_dir, capsys, extra, words):
    argv = ["generate", "--out", str(cut_store), "--model", str(tiny_image_model_dir), "--resume", "-q", *extra]
    _expect_error(capsys, argv, 1, *words)
    # the store is untouched and still resumes
    assert main(["generate", "--out", str(cut_store), "--model", str(tiny_image_model_dir), "--resume", "-q"]) == 0
    assert SlideStore.open(cut_store).provenance["complete"]


def test_export_and_info_errors(tmp_path, capsys):
    _expect_error(capsys, ["export", str(tmp_path / "none.zarr"), str(tmp_path / "x.ome.tif")], 1, "none.zarr",
                  out=tmp_path / "x.ome.tif")  # fmt: skip
    _expect_error(
        capsys, ["export", str(tmp_path), str(tmp_path / "x.unknown")], 1, "cannot tell the format", "--format"
    )
    _expect_error(capsys, ["info", str(tmp_path / "none")], 1, "none")


@pytest.mark.slow
def test_subprocess_errors_are_one_line(tmp_path, tiny_image_model_dir, inputs):
    """The installed entry point behaves as main(): one line, exit code, nothing left."""
    out = tmp_path / "s.zarr"
    for extra, code, word in (
        (["--size", "200000x200000", "--label", "1"], 1, "needs"),
        (["--size", "1x100000", "--label", "1"], 1, "smaller than one patch"),
        (["--label", "1", "--device", "tpu9"], 1, "tpu9"),
        (["--label", "1", "--steps", "x"], 2, "invalid int value"),
    ):
        argv = ["generate", "--out", str(out), "--model", str(tiny_image_model_dir), "-q", *extra]
        done = subprocess.run([sys.executable, "-m", "napari_diffinfinite.cli", *argv], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == code and len(lines) == 1 and lines[0].startswith("diffinfinite: error:"), done.stderr
        assert word in lines[0] and not out.exists()
