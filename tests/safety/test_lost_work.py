"""No lost work: the trainer never leaves a run without ``OUT/model``."""

from __future__ import annotations

import os

import pytest

from napari_diffinfinite.training import trainer
from napari_diffinfinite.training.trainer import replace_folder


def _folder(path, text):
    path.mkdir()
    (path / "config.json").write_text(text)
    return path


def test_model_folder_survives_a_failure_before_the_rename(tmp_path, monkeypatch):
    old = _folder(tmp_path / "model", "old")
    new = _folder(tmp_path / "new", "new")
    real = os.replace

    def failing(src, dst):
        if os.fspath(src).endswith(".model.tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(trainer.os, "replace", failing)
    with pytest.raises(OSError):
        replace_folder(new, old)
    assert (old / "config.json").read_text() == "old"  # the previous model is still there
    monkeypatch.setattr(trainer.os, "replace", real)
    replace_folder(new, old)
    assert (old / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"]  # no .model.tmp / .model.old left


def test_a_run_killed_between_the_renames_gets_its_model_back(tmp_path):
    # what a process killed between "model -> .model.old" and ".model.tmp -> model" leaves
    _folder(tmp_path / ".model.old", "old")
    _folder(tmp_path / ".model.tmp", "half")
    new = _folder(tmp_path / "new", "new")
    replace_folder(new, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"]
