"""GUI test of the reader-study dock widget: answers written, resume, accuracy shown."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_diffinfinite.evaluation.study import build_study  # noqa: E402
from napari_diffinfinite.widgets._study import TILE_LAYER, ReaderStudyWidget  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def study_folder(tmp_path):
    for name, colour in (("real", (220, 120, 170)), ("fake", (90, 60, 150))):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(folder / f"{name}{i}.png")
    return build_study([tmp_path / "real"], [tmp_path / "fake"], tmp_path / "study", tiles_per_source=3, size=32).folder


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_widget_records_answers_resumes_and_scores(make_napari_viewer, study_folder):
    viewer = make_napari_viewer()
    widget = ReaderStudyWidget(viewer)
    widget.folder.setText(str(study_folder))
    widget.reader.setText("jd")
    widget.start()
    assert widget.position.text() == "Tile 1 of 6"
    layer = viewer.layers[TILE_LAYER]
    assert layer.rgb and layer.data.shape == (32, 32, 3) and not layer.metadata
    key = widget.session.study.key

    first = widget.session.current()
    widget.realism.setCurrentIndex(4)
    widget.real_button.click()
    widget.synthetic_button.click()
    answers = study_folder / "answers-jd.csv"
    rows = _rows(answers)
    assert [(r["tile"], r["answer"], r["realism"]) for r in rows][0] == (first.id, "real", "4")
    assert rows[1]["answer"] == "synthetic" and rows[1]["realism"] == ""

    # A new widget (napari restarted) resumes at the third tile.
    again = ReaderStudyWidget(viewer)
    again.folder.setText(str(study_folder))
    again.reader.setText("jd")
    again.start()
    assert again.position.text() == "Tile 3 of 6"
    while again.session.current() is not None:
        truth = key[again.session.current().id]
        (again.real_button if truth == "real" else again.synthetic_button).click()
    assert len(_rows(answers)) == 6
    assert TILE_LAYER not in viewer.layers and not again.real_button.isEnabled()
    correct = sum(r["answer"] == key[r["tile"]] for r in _rows(answers))
    assert f"correct {correct}" in again.result.text() and "95% CI" in again.result.text()


def test_widget_shows_a_clear_message_for_a_wrong_folder(make_napari_viewer, tmp_path):
    widget = ReaderStudyWidget(make_napari_viewer())
    widget.folder.setText(str(tmp_path))
    widget.reader.setText("jd")
    widget.start()
    assert "not a study folder" in widget.result.text() and widget.session is None
