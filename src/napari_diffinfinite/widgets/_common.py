"""Small Qt building blocks shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from ._messages import fresh_path
from ._settings import recall, remember

#: ask(title, text, answers) -> the chosen answer, or "" when the dialog was closed
Ask = Callable[[str, str, Sequence[str]], str]


def ask_user(title: str, text: str, answers: Sequence[str]) -> str:
    """A modal question with one button per answer; the last answer is the Escape choice."""
    box = QMessageBox()
    box.setWindowTitle(title)
    box.setText(text)
    box.setIcon(QMessageBox.Icon.Question)
    buttons = {}
    for k, answer in enumerate(answers):
        role = QMessageBox.ButtonRole.RejectRole if k == len(answers) - 1 else QMessageBox.ButtonRole.AcceptRole
        buttons[box.addButton(answer, role)] = answer
    if answers:
        box.setDefaultButton(next(iter(buttons)))
    box.exec()
    return buttons.get(box.clickedButton(), "")


class ExistingPathQuestion:
    """What to do with an output path that already exists: overwrite it, or use a fresh name."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fresh = fresh_path(self.path)

    def ask(self, ask: Ask, what: str, refusal: str | None = None) -> Path | None:
        """``self.path`` to overwrite, ``self.fresh`` for a new name, None to cancel.

        ``refusal``: why the path may not be overwritten (a file, another tool's folder); then
        only the fresh name is offered, rather than offering Overwrite and refusing it after.
        """
        rename = f"Save as {self.fresh.name}"
        if refusal is not None:
            answer = ask(
                f"{self.path.name} exists", f"{refusal}.\n\nSave as {self.fresh.name} next to it?", [rename, "Cancel"]
            )
            return self.fresh if answer == rename else None
        answer = ask(
            f"{self.path.name} exists",
            f"The {what} {self.path} already exists. Overwrite it (its contents are replaced), "
            f"or save as {self.fresh.name} next to it?",
            [rename, "Overwrite", "Cancel"],
        )
        if answer == "Overwrite":
            return self.path
        if answer == rename:
            return self.fresh
        return None


def swatch_icon(rgb: Sequence[int], size: int = 14) -> QIcon:
    """A square icon filled with ``rgb`` (0..255), for class legends."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(int(rgb[0]), int(rgb[1]), int(rgb[2])))
    return QIcon(pixmap)


def human_count(n: int | None) -> str:
    """1234567 -> '1.23 M' (for parameter counts)."""
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


class PathEdit(QWidget):
    """A line edit with a Browse button whose value is remembered between sessions.

    ``mode``: "open" (an existing file), "dir" (an existing folder) or "save" (a new
    path). ``key`` names the
    remembered setting; an empty field means "default" (shown as ``placeholder``).
    """

    def __init__(
        self,
        key: str,
        *,
        mode: str = "open",
        caption: str = "Choose a path",
        file_filter: str = "",
        placeholder: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.key = key
        self.mode = mode
        self.caption = caption
        self.file_filter = file_filter
        self.line = QLineEdit(recall(key))
        self.line.setPlaceholderText(placeholder)
        self.line.setClearButtonEnabled(True)
        self.line.editingFinished.connect(self._remember)
        self.button = QPushButton("Browse…")
        self.button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.line, 1)
        layout.addWidget(self.button)

    # -- value ------------------------------------------------------------------------
    def value(self) -> str:
        """The path as typed ("" = default)."""
        return self.line.text().strip()

    def path(self) -> Path | None:
        text = self.value()
        return Path(text).expanduser() if text else None

    def set_value(self, value: str | Path) -> None:
        self.line.setText(str(value))
        self._remember()

    def _remember(self) -> None:
        remember(self.key, self.value())

    # -- dialog -----------------------------------------------------------------------
    def _start_dir(self) -> str:
        current = self.path()
        if current is None:
            return str(Path.home())
        return str(current if current.is_dir() else current.parent)

    def browse(self) -> None:
        """Open the file dialog for this field's mode and keep the choice."""
        chosen = ""
        if self.mode == "dir":
            chosen = QFileDialog.getExistingDirectory(self, self.caption, self._start_dir())
        elif self.mode == "save":
            chosen, _ = QFileDialog.getSaveFileName(
                self, self.caption, self.value() or self._start_dir(), self.file_filter
            )
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, self.caption, self._start_dir(), self.file_filter)
        if chosen:
            self.set_value(chosen)


def hbox(*widgets: QWidget, stretch_last: bool = False) -> QWidget:
    """Widgets side by side in one row."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    if stretch_last:
        layout.addStretch(1)
    return row


ALIGN_TOP = Qt.AlignmentFlag.AlignTop
