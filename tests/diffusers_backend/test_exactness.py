"""The backend drives the model exactly as diffusers does: on a one-patch canvas, its latent is
the diffusers pipeline's for the same initial latents, prompts, guidance and steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_diffinfinite.diffusers_backend.model import DiffusersOptions, load_diffusers
from napari_diffinfinite.sampling.sampler import RandomPatchSampler

STEPS = 4
GUIDANCE = 5.0


def _backend_latent(folder, scheduler: str, prompt: str, negative: str | None):
    model, _codec = load_diffusers(DiffusersOptions(pipeline=folder, prompt=prompt, negative_prompt=negative,
                                                    scheduler=scheduler))  # fmt: skip
    p = model.config.latent_patch
    sampler = RandomPatchSampler(
        model.unet, channels=4, patch=p, omega=GUIDANCE - 1, seed=3, batch_size=8,
        **model.sampler_options(steps=STEPS, eta=0.0, channels=4),
    )  # fmt: skip
    start = sampler.initial_state((p, p))
    end = sampler.run(start, np.zeros((p, p), np.uint8))
    return start.latent, end.latent


@pytest.mark.parametrize(
    ("which", "scheduler"), [("eps", "ddim"), ("v", "ddim"), ("eps", "dpm++")], ids=["ddim-eps", "ddim-v", "dpm++2m"]
)
def test_one_patch_equals_the_diffusers_pipeline(tiny_pipeline, tiny_v_pipeline, which, scheduler):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    folder = tiny_pipeline if which == "eps" else tiny_v_pipeline
    prompt, negative = "tumour cells, high grade", "blurry"
    init, ours = _backend_latent(folder, scheduler, prompt, negative)

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    if scheduler == "dpm++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt, negative_prompt=negative, latents=init[None].clone(), output_type="latent",
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, eta=0.0,
    ).images[0]  # fmt: skip
    assert ours.shape == theirs.shape == (4, 32, 32)
    assert not torch.allclose(ours, init, atol=1e-2)  # it did sample
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-4)
