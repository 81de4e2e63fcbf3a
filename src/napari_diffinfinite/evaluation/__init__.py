"""Evaluation of synthetic slides: image quality, privacy, layout adherence, seams, reader studies.

Each concern lives in its own module (``seams``, ``adherence``, ``metrics``, ...); import
from them directly. Nothing here imports Qt or napari.
"""
