"""The pixel-unshuffle lattice penalty: phase profiles, the penalty, and the image objective's use of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_diffinfinite.errors import TrainingError
from napari_diffinfinite.model.codec import IdentityCodec
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.testing import tiny_image_config
from napari_diffinfinite.training.objectives import ImageObjective, lattice_penalty, phase_profile


def _latticed(pixels: torch.Tensor, factor: int, strength: float) -> torch.Tensor:
    """``pixels`` with every f-th column pair's step made ``1 + strength`` times larger: a block lattice."""
    out = pixels.clone()
    for col in range(factor, pixels.shape[-1], factor):
        out[..., col:] += strength * (pixels[..., col : col + 1] - pixels[..., col - 1 : col])
    return out


def test_phase_profile_is_flat_for_noise_and_peaks_at_a_block_border() -> None:
    noise = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    flat = phase_profile(noise, 4)
    assert flat.shape == (8, 2, 4)
    assert torch.allclose(flat.mean(dim=0), torch.ones(2, 4), atol=0.03)
    steps = torch.zeros(1, 1, 8, 16)
    steps[..., 4:] = 1.0  # one step, between columns 3 and 4: phase 3 along x, nothing along y
    profile = phase_profile(steps + torch.arange(16.0) * 0.1, 4)[0]
    assert int(profile[0].argmax()) == 3 and profile[0, 3] > 2.0


def test_phase_profile_weighs_a_flat_image_as_much_as_a_busy_one() -> None:
    busy = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    flat = _latticed(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 0.01, 4, 1.0)
    profile = phase_profile(torch.cat([busy, flat]), 4)
    assert profile[1, 0, 3] > 1.3  # the faint image's lattice, unaffected by the busy one
    weight = torch.ones(2, 1, 32, 32)
    weight[1] = 0
    assert (phase_profile(torch.cat([busy, flat]), 4, weight)[1] == 0).all()
    assert torch.allclose(phase_profile(torch.cat([busy, flat]), 4, weight)[0], profile[0])


def test_lattice_penalty_is_small_without_a_lattice_and_its_gradient_removes_one() -> None:
    pixels = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert float(lattice_penalty(F.pixel_unshuffle(pixels, 4), 4)) < 2e-4
    estimate = F.pixel_unshuffle(_latticed(pixels, 4, 0.5), 4).requires_grad_(True)
    before = float(lattice_penalty(estimate, 4).detach())
    assert before > 1e-2
    optimiser = torch.optim.Adam([estimate], lr=0.01)
    for _ in range(50):
        optimiser.zero_grad()
        lattice_penalty(estimate, 4).backward()
        optimiser.step()
    assert float(lattice_penalty(estimate, 4).detach()) < 0.05 * before


class _Oracle(torch.nn.Module):
    """Predicts the exact v of x_t (knowing x0); with ``lattice`` its x0 estimate has a block lattice."""

    def __init__(self, x0: torch.Tensor, alphas: torch.Tensor, lattice: float = 0.0) -> None:
        super().__init__()
        self.x0, self.alphas = x0, alphas
        self.shown = F.pixel_unshuffle(_latticed(F.pixel_shuffle(x0, 4), 4, lattice), 4)

    def forward(self, x, t, masks):
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.shown


def _image_loss(lattice_weight: float, lattice: float) -> float:
    config = ModelConfig.from_dict({**tiny_image_config(unshuffle=4).to_dict(), "objective": "pred_v"})
    codec = IdentityCodec(4)
    objective = ImageObjective(config, codec, cond_drop_prob=0.0, lattice_weight=lattice_weight)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batch = {"image": images, "labels": torch.ones(4, 8, 8, dtype=torch.long)}
    net = _Oracle(codec.encode(images).float(), objective.schedule.alphas_cumprod, lattice)
    loss, _ = objective.loss(net, batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    return float(loss)


def test_image_objective_adds_the_penalty_for_a_lattice() -> None:
    assert _image_loss(10.0, 0.0) < 0.02  # no lattice: the sampling noise of 4 small tiles' profiles
    assert _image_loss(10.0, 0.5) > _image_loss(0.0, 0.5) + 0.05


@pytest.mark.parametrize(("codec", "unshuffle"), [("identity", 1), ("sd2-vae", 1)])
def test_lattice_penalty_needs_a_pixel_unshuffle(codec: str, unshuffle: int) -> None:
    config = tiny_image_config(codec=codec, unshuffle=unshuffle)
    with pytest.raises(TrainingError, match="pixel unshuffle"):
        ImageObjective(config, None, lattice_weight=1.0)
    ImageObjective(config, None, lattice_weight=0.0)  # off: any model


def test_lattice_penalty_gradient_is_finite_when_an_image_has_no_scored_pixels() -> None:
    """A per-label loss may leave whole images with nothing to score: the penalty must stay
    finite (a NaN here stopped a training run)."""
    estimate = torch.randn(2, 48, 4, 4).requires_grad_(True)
    weight = torch.ones(2, 1, 4, 4)
    weight[1] = 0
    penalty = lattice_penalty(estimate, 4, weight)
    penalty.backward()
    assert penalty.isfinite() and estimate.grad.isfinite().all() and (estimate.grad[1] == 0).all()
    assert float(lattice_penalty(estimate, 4, torch.zeros(2, 1, 4, 4))) == 0.0


def test_negative_lattice_weight_is_refused() -> None:
    with pytest.raises(TrainingError, match="lattice weight"):
        ImageObjective(tiny_image_config(), IdentityCodec(4), lattice_weight=-1.0)


def test_a_mask_run_with_a_lattice_weight_is_refused() -> None:
    """Mask objectives have no lattice penalty: a weight given for one is an error, not ignored."""
    from napari_diffinfinite.testing import tiny_mask_config
    from napari_diffinfinite.training.runner import build_objective
    from napari_diffinfinite.training.trainer import TrainSettings

    config = tiny_mask_config()
    with pytest.raises(TrainingError, match="mask model"):
        build_objective(config, IdentityCodec(config.pixel_unshuffle), TrainSettings(lattice_weight=1.0))
    build_objective(config, IdentityCodec(config.pixel_unshuffle), TrainSettings())
