"""Reader-study dock widget: show blinded tiles one at a time and record "real or synthetic?".

Thin: the study folder, the answers CSV and the scoring are
:mod:`napari_diffinfinite.evaluation.study`; this widget only shows the current tile in an
image layer named "study tile" (no file name, source or metadata), passes each answer on
(written to the CSV at once, so closing napari at any time loses nothing and "Start /
resume" continues at the first unanswered tile), and shows the reader's accuracy with its
confidence interval and the confusion table at the end. Make a study folder with
``diffinfinite study export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import DiffInfiniteError
from ..evaluation.study import ReaderSession, load_study

if TYPE_CHECKING:
    import napari

TILE_LAYER = "study tile"

__all__ = ["ReaderStudyWidget", "TILE_LAYER"]


class ReaderStudyWidget(QWidget):
    """Blinded real-vs-synthetic study for one reader (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ReaderSession | None = None

        self.folder = QLineEdit()
        self.folder.setPlaceholderText("study folder made by 'diffinfinite study export'")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QWidget()
        row = QHBoxLayout(folder_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        self.reader = QLineEdit()
        self.reader.setPlaceholderText("your name or initials")
        self.answers = QLineEdit()
        self.answers.setPlaceholderText("default: answers-<reader>.csv in the study folder")
        self.start_button = QPushButton("Start / resume")
        self.start_button.clicked.connect(self.start)

        self.position = QLabel("No study open.")
        self.realism = QComboBox()
        self.realism.addItem("(no score)", None)
        for value, text in enumerate(
            ("clearly artificial", "rather artificial", "unsure", "rather real", "fully real"), 1
        ):
            self.realism.addItem(f"{value}: {text}", value)
        self.real_button = QPushButton("Real  (R)")
        self.real_button.setShortcut("R")
        self.real_button.clicked.connect(lambda: self.answer("real"))
        self.synthetic_button = QPushButton("Synthetic  (S)")
        self.synthetic_button.setShortcut("S")
        self.synthetic_button.clicked.connect(lambda: self.answer("synthetic"))
        buttons = QWidget()
        brow = QHBoxLayout(buttons)
        brow.setContentsMargins(0, 0, 0, 0)
        brow.addWidget(self.real_button)
        brow.addWidget(self.synthetic_button)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setStyleSheet("font-family: monospace")

        form = QFormLayout()
        form.addRow("Study", folder_row)
        form.addRow("Reader", self.reader)
        form.addRow("Answers CSV", self.answers)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.start_button)
        layout.addWidget(self.position)
        layout.addWidget(QLabel("Is this tile real or synthetic?"))
        layout.addWidget(buttons)
        layout.addWidget(QLabel("Realism (optional)"))
        layout.addWidget(self.realism)
        layout.addWidget(self.result)
        layout.addStretch(1)
        self._enable_answers(False)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a study folder")
        if folder:
            self.folder.setText(folder)

    def _enable_answers(self, on: bool) -> None:
        for widget in (self.real_button, self.synthetic_button, self.realism):
            widget.setEnabled(on)

    def _error(self, exc: DiffInfiniteError) -> None:
        self.result.setText(f"⚠ {exc}")

    def start(self) -> None:
        """Open the study and the reader's answers; show the first unanswered tile."""
        try:
            folder = Path(self.folder.text().strip())
            study = load_study(folder)
            reader = self.reader.text().strip()
            answers = Path(self.answers.text().strip()) if self.answers.text().strip() else None
            answers = answers or folder / f"answers-{''.join(c if c.isalnum() else '_' for c in reader)}.csv"
            self.session = ReaderSession(study, answers, reader)
        except DiffInfiniteError as exc:
            self._error(exc)
            return
        self.result.setText("")
        self._show_current()

    def answer(self, said: str) -> None:
        """Record the reader's answer for the tile shown and move on."""
        if self.session is None or self.session.current() is None:
            return
        try:
            self.session.answer(said, self.realism.currentData())
        except DiffInfiniteError as exc:
            self._error(exc)
            return
        self.realism.setCurrentIndex(0)
        self._show_current()

    def _show_current(self) -> None:
        session = self.session
        assert session is not None
        tile = session.current()
        if tile is None:
            self._finish()
            return
        pixels = tile.image()
        if TILE_LAYER in self.viewer.layers:
            layer = self.viewer.layers[TILE_LAYER]
            layer.data = pixels
        else:
            self.viewer.add_image(pixels, name=TILE_LAYER, rgb=True)
        self.viewer.reset_view()
        self.position.setText(f"Tile {session.done + 1} of {session.total}")
        self._enable_answers(True)

    def _finish(self) -> None:
        session = self.session
        assert session is not None
        self._enable_answers(False)
        if TILE_LAYER in self.viewer.layers:
            self.viewer.layers.remove(TILE_LAYER)
        self.position.setText(f"Done: {session.total} of {session.total} answered (saved in {session.answers_path}).")
        try:
            self.result.setText("\n".join(session.score().lines()))
        except DiffInfiniteError as exc:
            self.result.setText(f"Answers saved. Scoring needs the key: {exc}")
