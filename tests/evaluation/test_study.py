"""The reader study without Qt: export, blinded files, resumable answers, scoring."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from napari_diffinfinite.errors import DiffInfiniteError
from napari_diffinfinite.evaluation.study import ReaderSession, build_study, load_study, score_answers


def _folder(path, colour, n=6, size=64):
    path.mkdir()
    rng = np.random.default_rng(sum(colour))
    for i in range(n):
        tile = np.clip(np.array(colour) + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(path / f"{'real' if colour[0] > 150 else 'fake'}_{i}.png")
    return path


@pytest.fixture
def study(tmp_path):
    real = _folder(tmp_path / "real", (220, 120, 170))
    fake = _folder(tmp_path / "fake", (90, 60, 150))
    return build_study([real], [fake], tmp_path / "study", tiles_per_source=5, size=48, seed=3)


def test_export_is_shuffled_anonymous_and_reproducible(study, tmp_path):
    assert len(study) == 10 and sorted(study.key.values()).count("real") == 5
    names = [t.path.name for t in study.tiles]
    assert all(name[:-4].isdigit() for name in names)  # no source in the file name
    with Image.open(study.tiles[0].path) as img:
        assert not img.info.get("source") and img.size == (48, 48)
    order = [study.key[t.id] for t in study.tiles]
    assert order != sorted(order)  # real and synthetic are mixed
    again = build_study(
        [tmp_path / "real"], [tmp_path / "fake"], tmp_path / "again", tiles_per_source=5, size=48, seed=3
    )
    assert [study.key[t.id] for t in study.tiles] == [again.key[t.id] for t in again.tiles]
    assert all(np.array_equal(a.image(), b.image()) for a, b in zip(study.tiles, again.tiles))


def test_answers_are_written_at_once_and_a_new_session_resumes(study, tmp_path):
    answers = tmp_path / "answers.csv"
    session = ReaderSession(study, answers, "ab")
    first = session.current()
    session.answer("real", realism=4)
    with open(answers, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"reader": "ab", "tile": first.id, "answer": "real", "realism": "4", "time": rows[0]["time"]}]
    session.answer("synthetic")
    resumed = ReaderSession(study, answers, "ab")
    assert resumed.done == 2 and resumed.current().id == study.tiles[2].id
    assert ReaderSession(study, answers, "cd").done == 0  # another reader starts afresh


def test_perfect_and_inverted_readers_are_scored(study, tmp_path):
    good, bad = ReaderSession(study, tmp_path / "a.csv", "good"), ReaderSession(study, tmp_path / "a.csv", "bad")
    while (tile := good.current()) is not None:
        good.answer(study.key[tile.id], realism=5 if study.key[tile.id] == "real" else 2)
    while (tile := bad.current()) is not None:
        bad.answer("real" if study.key[tile.id] == "synthetic" else "synthetic")
    score = score_answers(study, tmp_path / "a.csv", reader="good")
    assert score.accuracy == 1.0 and score.correct == 10
    assert score.confusion == {"real": {"real": 5, "synthetic": 0}, "synthetic": {"real": 0, "synthetic": 5}}
    assert score.ci_low == pytest.approx(0.025 ** (1 / 10), rel=1e-6)  # Clopper-Pearson bound for 10 of 10
    assert score.mean_realism == {"real": 5.0, "synthetic": 2.0}
    both = score_answers(study, tmp_path / "a.csv")
    assert both.accuracy == 0.5 and both.readers == {"good": 1.0, "bad": 0.0}
    assert "accuracy 50.0%" in both.lines()[0]


def test_finished_study_and_bad_input_are_refused(study, tmp_path):
    session = ReaderSession(study, tmp_path / "x.csv", "r")
    with pytest.raises(DiffInfiniteError, match="choose one of"):
        session.answer("maybe")
    with pytest.raises(DiffInfiniteError, match="1 \\(clearly artificial\\)"):
        session.answer("real", realism=9)
    while session.current() is not None:
        session.answer("real")
    with pytest.raises(DiffInfiniteError, match="finished"):
        session.answer("real")
    with pytest.raises(DiffInfiniteError, match="name"):
        ReaderSession(study, tmp_path / "x.csv", " ")


def test_key_moved_away(study, tmp_path):
    key = tmp_path / "key.csv"
    (study.folder / "key.csv").rename(key)
    blind = load_study(study.folder)
    session = ReaderSession(blind, tmp_path / "b.csv", "r")
    session.answer("real")
    with pytest.raises(DiffInfiniteError, match="key"):
        score_answers(blind, tmp_path / "b.csv")
    assert score_answers(load_study(study.folder, key), tmp_path / "b.csv").answered == 1


def test_overwrite_keeps_answers_saved_in_the_study_folder(study, tmp_path):
    """The widget saves answers-<reader>.csv in the study folder; re-exporting with
    --overwrite deleted them with the rest of the folder."""
    from napari_diffinfinite.evaluation.distances import EvaluationError

    answers = study.folder / "answers-ab.csv"
    ReaderSession(study, answers, "ab").answer("real")
    with pytest.raises(EvaluationError, match="did not write.*answers-ab.csv"):
        build_study([tmp_path / "real"], [tmp_path / "fake"], study.folder, tiles_per_source=5, size=48, overwrite=True)
    assert answers.is_file()
    answers.unlink()  # what the tool wrote alone is replaced
    again = build_study(
        [tmp_path / "real"], [tmp_path / "fake"], study.folder, tiles_per_source=2, size=48, overwrite=True
    )
    assert len(again) == 4


def test_a_report_folder_with_other_files_is_not_overwritten(tmp_path):
    from napari_diffinfinite.evaluation.distances import EvaluationError
    from napari_diffinfinite.evaluation.report import REPORT_FILES, check_report_folder

    out = tmp_path / "report"
    out.mkdir()
    for name in REPORT_FILES.values():
        (out / name).write_text("{}")
    check_report_folder(out, overwrite=True)  # a report of ours: may be replaced
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(EvaluationError, match="did not write.*my_notes.txt"):
        check_report_folder(out, overwrite=True)
    with pytest.raises(EvaluationError, match="pass --overwrite"):
        check_report_folder(out)
