import math

import numpy as np

from napari_diffinfinite.sampling.schedule import Schedule, cosine_alphas_cumprod, ddim_time_pairs


def _official_alphas_cumprod(T=1000, s=0.008):
    x = np.linspace(0, T, T + 1, dtype=np.float64)
    ac = np.cos(((x / T) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = np.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def test_cosine_schedule_matches_reference():
    np.testing.assert_allclose(cosine_alphas_cumprod().numpy(), _official_alphas_cumprod(), rtol=1e-12)


def test_time_pairs_match_official():
    pairs = ddim_time_pairs(250)
    assert pairs[0] == (999, 995) and pairs[-1] == (3, -1) and len(pairs) == 250
    times = [int(v) for v in np.linspace(-1, 999, 51).astype(np.float32)]
    expected = list(zip(reversed(times[1:]), reversed(times[:-1])))
    assert ddim_time_pairs(50) == expected


def test_ddim_step_constants_eta_one():
    sched = Schedule(250, eta=1.0)
    ac = sched.alphas_cumprod.double()
    step = sched[10]
    a, a_next = ac[step.t], ac[step.t_next]
    sigma = math.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
    assert math.isclose(step.sigma, sigma, rel_tol=1e-5)
    assert math.isclose(step.c, math.sqrt(1 - a_next - sigma**2), rel_tol=1e-4)
    assert sched[249].final


def test_few_steps_do_not_produce_nan():
    for steps in (1, 2, 3, 5):
        for step in Schedule(steps)._steps:
            assert all(math.isfinite(v) for v in (step.c, step.sigma, step.sqrt_ac_next))
