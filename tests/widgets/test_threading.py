"""Workers whose widget is gone: their callbacks must not touch deleted Qt objects."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.compat import isalive  # noqa: E402
from qtpy.QtCore import QCoreApplication, QEvent  # noqa: E402
from qtpy.QtWidgets import QLabel  # noqa: E402

from napari_diffinfinite.widgets._threading import while_alive  # noqa: E402

pytestmark = pytest.mark.gui


def test_callbacks_of_a_worker_that_outlives_its_widget_are_skipped(qtbot):
    """The Generate panel's duration estimate once raised "wrapped C/C++ object of type QLabel
    has been deleted" when napari closed while the model was being timed: start_worker(owner=...)
    wraps the callbacks in while_alive."""
    label = QLabel("timing the model")
    calls = []

    def on_result(value: str) -> None:
        calls.append(value)
        label.setText(value)  # raises RuntimeError on a deleted label

    guarded = while_alive(label, on_result)
    guarded("first")
    assert calls == ["first"] and label.text() == "first"
    label.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    assert not isalive(label)
    guarded("after the widget is gone")  # no RuntimeError
    assert calls == ["first"]
