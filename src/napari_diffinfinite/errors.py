"""Exceptions raised by the engine.

Every message names what is wrong and how to fix it, so that the CLI and the napari
widgets can show it to the user as it is.
"""

from __future__ import annotations


class DiffInfiniteError(Exception):
    """Base class of all errors the engine raises on purpose."""


class CheckpointError(DiffInfiniteError):
    """A model file is missing, corrupt, unsafe or does not fit the expected network."""


class MaskError(DiffInfiniteError):
    """A label mask cannot be read or does not fit the model or the slide."""


class StoreError(DiffInfiniteError):
    """A slide store cannot be created, opened or resumed."""


class ExportError(DiffInfiniteError):
    """An export cannot be written."""


class TrainingError(DiffInfiniteError):
    """Training data or settings are unusable."""


class SettingsError(DiffInfiniteError, ValueError):
    """A generation setting (size, steps, guidance, device, ...) is out of range or inconsistent.

    Also a ``ValueError``, so callers that caught the ``ValueError`` of a bad setting keep working.
    """
