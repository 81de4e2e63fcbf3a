"""napari-diffinfinite: synthetic whole-slide images with DiffInfinite.

The engine (``model``, ``sampling``, ``slide``, ``engine``) never imports Qt or napari;
the napari plugin lives in ``widgets`` and is registered through ``napari.yaml``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
