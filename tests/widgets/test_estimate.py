"""The time estimate shown next to Generate (pure: runs without napari)."""

from __future__ import annotations

import pytest

from napari_diffinfinite.widgets._estimate import (
    Calibration,
    calibrate,
    describe_duration,
    estimate_seconds,
    tile_count,
)


def test_tile_counts():
    assert tile_count((16384, 16384)) == 1024 and tile_count((513, 100)) == 2


def test_estimate_scales_with_steps_and_area_and_counts_the_cell_context():
    cal = Calibration(seconds_per_patch=0.05, seconds_per_tile=0.1, patch=32, scale_factor=4, device="cpu")
    small = estimate_seconds(cal, (1024, 1024), 5)
    # 256 x 256 latent: cells 28 wide with 2 latent pixels of context on each side at every
    # step: 10 x 10 patches a step (9 x 9 for cells without context)
    assert small == pytest.approx(5 * 100 * 0.05 + 4 * 0.1)
    assert estimate_seconds(cal, (128, 128), 10) == pytest.approx(10 * 0.05 + 0.1)  # one patch
    big = estimate_seconds(cal, (16384, 16384), 25)
    assert big > 600 > small  # a default 16k slide on a CPU needs the confirmation
    assert describe_duration(40) == "about 40 s"
    assert describe_duration(600) == "about 10 min"
    assert describe_duration(big) == f"about {big / 3600:.2g} h"


def test_long_durations_are_never_in_scientific_notation():
    assert describe_duration(3 * 86400) == "about 3 days"
    assert describe_duration(521 * 86400) == "about 521 days"  # was "about 5.2e+02 days"
    assert describe_duration(64_102 * 86400) == "about 176 years"


def test_estimate_for_a_huge_slide_is_quick():
    # a 10,000,000 px side used to build every patch of a step (178 GiB) on each change of Steps
    cal = Calibration(seconds_per_patch=0.05, seconds_per_tile=0.1, patch=32, scale_factor=4, device="cpu")
    assert "years" in describe_duration(estimate_seconds(cal, (10_000_000, 10_000_000), 8))


def test_calibration_times_the_real_model(tiny_image_model_dir):
    from napari_diffinfinite import engine

    model = engine.load_image_model(tiny_image_model_dir, device="cpu")
    codec = engine.load_codec(None, model, device="cpu")
    cal = calibrate(model, codec, engine.GenerateSettings(device="cpu", batch_size=64))
    assert cal.seconds_per_patch > 0 and cal.seconds_per_tile >= 0
    assert cal.patch == model.config.latent_patch and cal.scale_factor == codec.scale_factor
    assert cal.device == "cpu"


def test_calibration_is_timed_on_a_warm_network(tiny_image_model_dir):
    """The first call of a network pays for its warm-up; the estimate must not scale that up."""
    import time

    from napari_diffinfinite import engine

    model = engine.load_image_model(tiny_image_model_dir, device="cpu")
    codec = engine.load_codec(None, model, device="cpu")
    forward, calls = model.unet.forward, []

    def cold_first_call(*args, **kwargs):
        if not calls:
            time.sleep(0.5)  # a first call as slow as a cold oneDNN start
        calls.append(1)
        return forward(*args, **kwargs)

    model.unet.forward = cold_first_call
    cal = calibrate(model, codec, engine.GenerateSettings(device="cpu", batch_size=64))
    assert len(calls) >= 2 and cal.seconds_per_patch < 0.25
