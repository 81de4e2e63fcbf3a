"""Remembered choices (checkpoint paths, output folders) between napari sessions.

Values live in :class:`QSettings` under ``napari-diffinfinite``. Setting the environment
variable ``NAPARI_DIFFINFINITE_SETTINGS`` to a file path stores them in that INI file
instead, which keeps tests from touching the user's real settings.
"""

from __future__ import annotations

import os

from qtpy.QtCore import QSettings

ORGANIZATION = "napari-diffinfinite"
APPLICATION = "napari-diffinfinite"
ENV_VAR = "NAPARI_DIFFINFINITE_SETTINGS"


def settings() -> QSettings:
    """The settings object the widgets read and write."""
    path = os.environ.get(ENV_VAR)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


def recall(key: str, default: str = "") -> str:
    """The remembered string for ``key`` (``default`` when nothing was stored)."""
    value = settings().value(key, default)
    return "" if value is None else str(value)


def remember(key: str, value: str) -> None:
    """Store ``value`` under ``key`` and flush it to disk at once."""
    store = settings()
    store.setValue(key, value)
    store.sync()
