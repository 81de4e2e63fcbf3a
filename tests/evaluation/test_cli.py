"""``diffinfinite evaluate`` and ``diffinfinite study`` end to end on a real slide and a slide store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.cli import main
from tests.slide.conftest import make_store


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "syn.zarr"
    make_store(path, shape=(768, 1024))
    return path


def _evaluate(tmp_path, cmu_svs, synthetic_store, out_name, *extra):
    out = tmp_path / out_name
    argv = [
        "evaluate", "--real", str(cmu_svs), "--synthetic", str(synthetic_store), "--out", str(out),
        "--tiles", "12", "--tile-size", "96", "--features", "random", "--kid-subsets", "3", "--device", "cpu",
        "--quiet", "--seam-period", "128", "--seam-period", "256", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_evaluate_writes_a_reproducible_report(tmp_path, cmu_svs, synthetic_store, capsys):
    out, metrics = _evaluate(
        tmp_path, cmu_svs, synthetic_store, "report", "--patch-fid", "8", "--training", str(cmu_svs)
    )
    for name in ("report.png", "report.html", "real_grid.png", "synthetic_grid.png"):
        assert (out / name).stat().st_size > 0
    with Image.open(out / "report.png") as img:
        assert img.width >= 700
    q = metrics["quality"]
    assert q["fid"] > 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
    assert metrics["tiles"]["real"]["tiles"] == 12 and metrics["patch_fid"]["crops"] == 8
    assert metrics["privacy"]["authenticity"] == 1.0  # a store of smooth waves copies nothing of the real slide
    slide = metrics["slides"][str(synthetic_store)]
    assert set(slide["seams"]) == {"128", "256"} and slide["seams"]["128"]["x"]["score"] < 1.5
    assert slide["seams_exclude_class_borders_px"] == 8  # the store has a layout: its class borders are left out
    assert 0 <= slide["adherence"]["mean_iou"] <= 1
    assert slide["adherence"]["segmenter"]["name"] == "he"
    assert slide["adherence"]["segmenter"]["glass_min_area"] == 500
    assert "FID" in capsys.readouterr().out

    _, again = _evaluate(tmp_path, cmu_svs, synthetic_store, "again", "--patch-fid", "8", "--training", str(cmu_svs))
    assert again["quality"] == metrics["quality"] and again["patch_fid"] == metrics["patch_fid"]


def test_evaluate_refuses_an_existing_folder_and_missing_weights(
    tmp_path, cmu_svs, synthetic_store, capsys, monkeypatch
):
    (tmp_path / "taken").mkdir()
    argv = ["evaluate", "--real", str(cmu_svs), "--synthetic", str(synthetic_store), "--out", str(tmp_path / "taken")]
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DIFFINFINITE_INCEPTION_WEIGHTS", raising=False)
    argv[-1] = str(tmp_path / "new")
    assert main([*argv, "--tiles", "4", "--tile-size", "64", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Inception-v3 weights" in err and "checkpoints" in err
    assert not (tmp_path / "new").exists()


def test_evaluate_compares_slides_at_one_pixel_size(tmp_path, cmu_svs, capsys):
    """A 2 um/px synthetic slide against the 0.499 um/px scan: the scan is read at 2 um/px."""
    from napari_diffinfinite.slide.store import SlideStore

    coarse = tmp_path / "coarse.zarr"
    store = SlideStore.create(
        coarse, (512, 512), class_names=["unknown", "tissue"], class_colors=[(0, 0, 0), (200, 100, 150)],
        pixel_size_um=2.0, provenance={"seed": 0},
    )  # fmt: skip
    store.write_tile(0, 0, np.broadcast_to(np.array([180, 90, 160], np.uint8)[:, None, None], (3, 512, 512)).copy())
    store.mark_complete()
    common = [
        "evaluate", "--real", str(cmu_svs), "--synthetic", str(coarse), "--tiles", "6", "--tile-size", "64",
        "--features", "random", "--kid-subsets", "2", "--kid-subset-size", "6", "--device", "cpu", "--quiet",
        "--no-seams", "--no-adherence",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert metrics["pixel_size"]["compared_at_um"] == 2.0
    assert metrics["pixel_size"]["slides_um"] == {str(cmu_svs): pytest.approx(0.499, abs=0.001), str(coarse): 2.0}
    assert "compared at 2 um/px" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "native"), "--pixel-size", "native"]) == 0
    native = json.loads((tmp_path / "native" / "metrics.json").read_text())
    assert native["pixel_size"]["compared_at_um"] is None
    assert native["quality"]["fid"] != metrics["quality"]["fid"]  # other real tiles: 4x the magnification
    assert main([*common, "--out", str(tmp_path / "finer"), "--pixel-size", "1"]) == 1
    err = capsys.readouterr().err
    assert "coarse.zarr has 2 um/px, coarser than the 1 um/px" in err and "--pixel-size 2" in err
    assert not (tmp_path / "finer").exists()
    assert main([*common, "--out", str(tmp_path / "bad"), "--pixel-size", "abc"]) == 1
    assert "--pixel-size must be 'auto', 'native' or microns per pixel" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_study_export_and_score(tmp_path, cmu_svs, synthetic_store, capsys):
    folder = tmp_path / "study"
    argv = ["study", "export", "--real", str(cmu_svs), "--synthetic", str(synthetic_store), "--out", str(folder)]
    assert main([*argv, "--tiles", "4", "--tile-size", "64"]) == 0
    assert "8 tiles (4 real, 4 synthetic)" in capsys.readouterr().out
    from napari_diffinfinite.evaluation.study import ReaderSession, load_study

    study = load_study(folder)
    session = ReaderSession(study, tmp_path / "a.csv", "r")
    rng = np.random.default_rng(0)
    while session.current() is not None:
        session.answer(str(rng.choice(["real", "synthetic"])))
    assert main(["study", "score", str(folder), "--answers", str(tmp_path / "a.csv"), "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["answered"] == 8 and score["ci_low"] <= score["accuracy"] <= score["ci_high"]
