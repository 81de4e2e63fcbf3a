"""Fixtures for the evaluation tests: the real CMU slide (shared with the slide tests)."""

from __future__ import annotations

from tests.slide.conftest import cmu_svs  # noqa: F401  (the real Aperio slide, downloaded once)
