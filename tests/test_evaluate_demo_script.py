"""scripts/evaluate_demo.py: the reference a mask model is compared with is smoothed as its training layouts were."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_demo.py"


@pytest.fixture(scope="module")
def evaluate_demo():
    spec = importlib.util.spec_from_file_location("evaluate_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(folder: Path, extra: dict | None = None):
    return SimpleNamespace(config=SimpleNamespace(extra=extra or {}), source=str(folder))


def test_recorded_layout_smoothing_of_an_installed_model(evaluate_demo, tmp_path):
    model = _model(tmp_path / "mask", {"training": {"data": {"layout_smoothing_um": 48.0}}})
    assert evaluate_demo.recorded_training_data(model, "layout_smoothing_um") == 48.0


def test_recorded_layout_smoothing_of_a_run_folder(evaluate_demo, tmp_path):
    """A model left in train_demo.py's run folder (--no-install) has it in train-settings.json beside it."""
    (tmp_path / "mask" / "model").mkdir(parents=True)
    (tmp_path / "mask" / "train-settings.json").write_text(json.dumps({"data": {"layout_smoothing_um": 36}}))
    assert evaluate_demo.recorded_training_data(_model(tmp_path / "mask" / "model"), "layout_smoothing_um") == 36.0


def test_recorded_tissue_threshold_of_a_checkpoint(evaluate_demo, tmp_path):
    """A checkpoint of a run (mask/checkpoints/step-N) finds the run's settings two folders up."""
    (tmp_path / "mask" / "checkpoints" / "step-0000500").mkdir(parents=True)
    data = {"data": {"layout_smoothing_um": 48, "tissue_condition_min_fraction": 0.42}}
    (tmp_path / "mask" / "train-settings.json").write_text(json.dumps(data))
    model = _model(tmp_path / "mask" / "checkpoints" / "step-0000500")
    assert evaluate_demo.recorded_training_data(model, "tissue_condition_min_fraction") == 0.42


def test_no_recorded_layout_smoothing(evaluate_demo, tmp_path):
    (tmp_path / "model").mkdir()
    assert evaluate_demo.recorded_training_data(_model(tmp_path / "model"), "layout_smoothing_um") is None
