import numpy as np
import pytest
import torch
from torch import nn

from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.sampling.sampler import RandomPatchSampler


def _sampler(model, batch_size, steps=3, seed=11):
    return RandomPatchSampler(
        model.unet,
        channels=model.config.unet.channels,
        patch=model.config.latent_patch,
        steps=steps,
        omega=2.0,
        seed=seed,
        batch_size=batch_size,
    )


def _labels(shape):
    labels = np.ones(shape, np.uint8)
    labels[:, shape[1] // 3 :] = 2
    labels[: shape[0] // 4] = 0
    return labels


def test_each_latent_pixel_advances_exactly_once_per_step(tiny_image_model, monkeypatch):
    shape = (75, 90)
    sampler = _sampler(tiny_image_model, batch_size=4)
    updates, sizes = [], []
    real_grid = sampler.grid

    def recording(shape_, step):
        grid = real_grid(shape_, step)
        counts = np.zeros(shape_, int)
        for p in grid.patches():
            counts[p.own_y0 : p.own_y1, p.own_x0 : p.own_x1] += 1
        updates.append(counts)
        sizes.append(len(grid))
        return grid

    monkeypatch.setattr(sampler, "grid", recording)
    out = sampler.run(sampler.initial_state(shape), _labels(shape))
    assert len(updates) == 3 and all((c == 1).all() for c in updates)
    assert out.step == 3 and torch.isfinite(out.latent).all()
    assert sampler.stats.patches_per_step == sizes


def test_same_seed_same_result_across_batch_sizes(tiny_image_model):
    shape = (70, 100)
    results = []
    for batch in (1, 8):
        sampler = _sampler(tiny_image_model, batch_size=batch)
        results.append(sampler.run(sampler.initial_state(shape), _labels(shape)).latent)
    # batched convolutions round differently; at t=999 x0 = 2e4 * (x - eps) amplifies that
    # 1e-7 noise to ~1e-3 at a handful of pixels (2 in 10^4 with the channels-last kernels, on
    # one thread); everywhere else the results agree to ~1e-6
    difference = (results[0] - results[1]).abs()
    assert difference.max() < 5e-2 and difference.mean() < 2e-5
    assert (difference > 1e-3).float().mean() < 1e-3


def test_cpu_sampler_runs_channels_last_by_default_with_the_same_result(tiny_image_model):
    shape = (70, 100)
    results = []
    for channels_last in (None, False):
        sampler = RandomPatchSampler(
            tiny_image_model.unet, channels=tiny_image_model.config.unet.channels,
            patch=tiny_image_model.config.latent_patch, steps=3, omega=2.0, seed=11, batch_size=8,
            channels_last=channels_last,
        )  # fmt: skip
        assert sampler.denoiser.channels_last is (channels_last is None)
        results.append(sampler.run(sampler.initial_state(shape), _labels(shape)).latent)
    tiny_image_model.unet.to(memory_format=torch.contiguous_format)
    # the memory formats round differently, as batch sizes do (see the test above)
    difference = (results[0] - results[1]).abs()
    assert difference.max() < 5e-2 and difference.mean() < 2e-5


def test_different_seeds_differ(tiny_image_model):
    shape = (64, 64)
    a = _sampler(tiny_image_model, 4, seed=1)
    b = _sampler(tiny_image_model, 4, seed=2)
    assert not torch.allclose(
        a.run(a.initial_state(shape), _labels(shape)).latent, b.run(b.initial_state(shape), _labels(shape)).latent
    )


def test_cancel_saves_step_boundary_and_resume_matches(tiny_image_model):
    shape = (70, 100)
    reference = _sampler(tiny_image_model, 4)
    expected = reference.run(reference.initial_state(shape), _labels(shape)).latent

    saved = []
    token = CancelToken()
    calls = {"n": 0}

    def progress(event):
        calls["n"] += 1
        if calls["n"] == 5:
            token.cancel()

    interrupted = _sampler(tiny_image_model, 4)
    with pytest.raises(Cancelled):
        interrupted.run(
            interrupted.initial_state(shape), _labels(shape), progress=progress, cancel=token, checkpoint=saved.append
        )
    state = saved[-1]
    assert 0 <= state.step < 3
    resumed = _sampler(tiny_image_model, 4).run(state, _labels(shape))
    assert torch.equal(resumed.latent, expected)


def test_preview_is_sent_per_step(tiny_image_model, identity_codec):
    from napari_diffinfinite.sampling.preview import preview_rgb

    shape = (64, 96)
    previews = []
    sampler = _sampler(tiny_image_model, 8, steps=2)
    sampler.run(
        sampler.initial_state(shape), _labels(shape), preview=lambda x0: preview_rgb(x0, identity_codec),
        progress=lambda e: e.preview is not None and previews.append(e.preview),
    )  # fmt: skip
    assert len(previews) == 2 and previews[0].shape == (64 * 4, 96 * 4, 3) and previews[0].dtype == np.uint8


def test_label_shape_must_match(tiny_image_model):
    sampler = _sampler(tiny_image_model, 4)
    with pytest.raises(ValueError, match="does not match the latent"):
        sampler.run(sampler.initial_state((64, 64)), np.ones((64, 65), np.uint8))


class PointwiseNetwork(nn.Module):
    """A per-pixel stand-in UNet: its prediction at a pixel depends only on that pixel, the
    time and the mask there, so any difference between runs comes from the sampler."""

    def forward(self, x, t, mask):
        return torch.tanh(0.5 * x + 0.1 * mask + 1e-4 * t[:, None, None, None].float())


class BorderBlindNetwork(PointwiseNetwork):
    """Pointwise, except that it is wrong within ``margin`` pixels of its window's border."""

    def __init__(self, margin):
        super().__init__()
        self.margin = margin

    def forward(self, x, t, mask):
        ring = torch.ones(x.shape[-2:])
        m = self.margin
        ring[m:-m, m:-m] = 0
        return super().forward(x, t, mask) + ring


def _pointwise_sampler(batch_size, network=None, **kwargs):
    return RandomPatchSampler(
        network or PointwiseNetwork(), channels=4, patch=16, steps=4, omega=2.0, seed=5, batch_size=batch_size, **kwargs
    )


def test_batch_size_and_resume_are_bit_identical():
    shape = (40, 53)
    latents = []
    for batch in (1, 3, 64):
        sampler = _pointwise_sampler(batch)
        latents.append(sampler.run(sampler.initial_state(shape), _labels(shape)).latent)
    assert torch.equal(latents[0], latents[1]) and torch.equal(latents[0], latents[2])
    saved = []
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        if event.done > 1500:  # in the middle of the second step
            token.cancel()

    interrupted = _pointwise_sampler(3)
    with pytest.raises(Cancelled):
        interrupted.run(
            interrupted.initial_state(shape), _labels(shape), progress=progress, cancel=token, checkpoint=saved.append
        )
    assert saved[-1].step == 1
    resumed = _pointwise_sampler(2).run(saved[-1], _labels(shape))
    assert torch.equal(resumed.latent, latents[0])


def test_cell_context_keeps_window_borders_out_of_written_cells():
    shape, margin = (40, 53), 3
    clean = _pointwise_sampler(8, context=margin)
    expected = clean.run(clean.initial_state(shape), _labels(shape)).latent
    blind = _pointwise_sampler(8, BorderBlindNetwork(margin), context=margin)
    got = blind.run(blind.initial_state(shape), _labels(shape)).latent
    without = _pointwise_sampler(8, BorderBlindNetwork(margin), context=0)
    unprotected = without.run(without.initial_state(shape), _labels(shape)).latent
    # away from the canvas edge (where windows are clamped and nothing lies beyond), no written
    # pixel ever saw the network's blind border
    inner = (slice(None), slice(margin, -margin), slice(margin, -margin))
    assert torch.equal(got[inner], expected[inner])
    assert not torch.allclose(unprotected[inner], expected[inner])


def test_cell_context_applies_from_its_share_of_the_schedule():
    default = RandomPatchSampler(PointwiseNetwork(), channels=4, patch=32, steps=10, batch_size=4)
    assert [default.context(k) for k in range(10)] == [2] * 10  # patch / 16 at every step of 10
    sampler = RandomPatchSampler(
        PointwiseNetwork(), channels=4, patch=32, steps=10, batch_size=4, context=4, context_from=0.6
    )
    assert [sampler.context(k) for k in range(10)] == [0] * 6 + [4] * 4
    assert len(sampler.grid((128, 128), 9)) > len(sampler.grid((128, 128), 0))
    with pytest.raises(ValueError, match="leaves no cell"):
        RandomPatchSampler(PointwiseNetwork(), channels=4, patch=8, batch_size=4, context=4)


def test_cells_go_without_context_only_where_the_x0_prediction_barely_enters_the_latent():
    """Context is skipped at steps whose x0 weight sqrt(alpha_bar_next) is under 0.05: none of
    25 steps (the seams measurement), the first of 50, the first 8 of 250; never the final step."""
    from napari_diffinfinite.sampling.sampler import CONTEXT_MIN_SIGNAL, x0_weight

    def without(steps):
        sampler = RandomPatchSampler(PointwiseNetwork(), channels=4, patch=32, steps=steps, batch_size=4)
        return [k for k in range(steps) if sampler.context(k) == 0]

    assert without(8) == without(25) == []
    assert without(50) == [0]
    assert without(250) == list(range(8))
    schedule = RandomPatchSampler(PointwiseNetwork(), channels=4, patch=32, steps=250, batch_size=4).schedule
    assert x0_weight(schedule[7]) < CONTEXT_MIN_SIGNAL <= x0_weight(schedule[8])
    assert x0_weight(schedule[249]) == 1.0  # the final step returns x0 itself


@pytest.mark.parametrize("steps", [10, 50])
def test_patches_per_run_matches_what_the_sampler_evaluates(steps):
    from napari_diffinfinite.benchmarks.overhead import ZeroCostNetwork
    from napari_diffinfinite.sampling.sampler import patches_per_run

    shape = (150, 211)
    sampler = RandomPatchSampler(ZeroCostNetwork(), channels=4, patch=32, steps=steps, seed=3)
    sampler.run(sampler.initial_state(shape), np.ones(shape, np.uint8))
    done = sum(sampler.stats.patches_per_step)
    if steps == 50:  # step 0 of 50 has no context: its cells fill their windows, fewer patches
        assert sampler.stats.patches_per_step[0] < min(sampler.stats.patches_per_step[1:])
    assert abs(patches_per_run(shape, 32, steps) - done) <= 0.1 * done


def test_window_presence_equals_looking_at_every_label():
    """The min/max shortcut of the step plan finds exactly the labels of every window."""
    from napari_diffinfinite.benchmarks.overhead import ZeroCostNetwork
    from napari_diffinfinite.sampling.canvas import LatentCanvas
    from napari_diffinfinite.sampling.guidance import label_presence

    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 5, (4, 4)), 27, 0), 27, 1).astype(np.uint8)  # 108 x 108
    labels[40:60, 40:60] = 2
    sampler = RandomPatchSampler(ZeroCostNetwork(), channels=4, patch=16, steps=4)
    canvas = LatentCanvas(torch.zeros(4, *labels.shape), labels, torch.device("cpu"))
    grid = sampler.grid(labels.shape, 1)
    geometry = np.stack([grid.window_y, grid.window_x, grid.own_y0, grid.own_y1, grid.own_x0, grid.own_x1])
    got = sampler._presence(canvas, geometry, 5)
    windows = torch.stack(
        [torch.from_numpy(labels[y : y + 16, x : x + 16]) for y, x in zip(grid.window_y, grid.window_x)]
    )
    assert np.array_equal(got, label_presence(windows, 5).numpy())
    assert got.sum(1).min() == 1 and got.sum(1).max() >= 3  # uniform, two-label and many-label windows
