"""The backend inside the random-patch sampler: the ControlNet sees the layout under each patch,
per-class prompts act only where their class is, and the slide depends on neither the batch
size nor an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_diffinfinite.diffusers_backend.model import DiffusersOptions, load_diffusers
from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.sampling.sampler import RandomPatchSampler, SamplerState


def _sampler(model, *, steps: int, batch_size: int = 16, eta: float = 0.0, seed: int = 0, omega: float = 4.0):
    return RandomPatchSampler(
        model.unet, channels=4, patch=model.config.latent_patch, omega=omega, seed=seed, batch_size=batch_size,
        **model.sampler_options(steps=steps, eta=eta, channels=4),
    )  # fmt: skip


def test_controlnet_receives_the_layout_under_each_patch(tiny_pipeline, tiny_controlnet):
    model, _ = load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, prompt="tissue", controlnet=tiny_controlnet))
    conditioning = model.unet.conditioning
    assert conditioning.mode == "colors" and model.config.class_names == ["unknown", "tumour", "stroma"]
    shape = (48, 72)
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 3, (12, 18)), np.ones((4, 4), np.int64)).astype(np.uint8)
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["controlnet_cond"].detach().clone())

    handle = model.unet.controlnet.register_forward_pre_hook(hook, with_kwargs=True)
    sampler = _sampler(model, steps=2, batch_size=64)
    try:
        sampler.run(sampler.initial_state(shape), labels)
    finally:
        handle.remove()
    images = torch.cat(seen)  # (rows, 3, 8P, 8P), every row of every step
    p = model.config.latent_patch
    assert images.shape[1:] == (3, 8 * p, 8 * p)
    colours = conditioning.colors  # (3 classes, RGB)
    # back from colours to labels, one per 8 x 8 px block (the image is the latent-resolution layout upsampled)
    blocks = images[:, :, ::8, ::8]
    assert torch.equal(images, blocks.repeat_interleave(8, 2).repeat_interleave(8, 3))
    decoded = (blocks[:, None] - colours[None, :, :, None, None]).abs().sum(2).argmin(1).numpy()
    expected = set()
    for step in range(2):
        grid = sampler.grid(shape, step)
        for wy, wx in zip(grid.window_y, grid.window_x):
            expected.add(labels[wy : wy + p, wx : wx + p].tobytes())
    got = {d.astype(np.uint8).tobytes() for d in decoded}
    assert got == expected  # each conditioning image is the layout under one of the step's windows, all are seen


def test_controlnet_one_hot_conditioning(tiny_pipeline, tmp_path):
    from napari_diffinfinite.diffusers_backend.tiny import write_tiny_controlnet

    cn = write_tiny_controlnet(tmp_path / "cn", conditioning_channels=4)
    with pytest.raises(CheckpointError, match="takes 4 conditioning channels but one-hot conditioning of 3 classes"):
        load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, controlnet=cn))  # the pipeline's 3 classes
    (cn / "diffinfinite.json").write_text(json.dumps({"class_names": ["unknown", "a", "b", "c"]}))
    model, _ = load_diffusers(DiffusersOptions(pipeline=tiny_pipeline, controlnet=cn))
    assert model.unet.conditioning.mode == "onehot" and len(model.config.class_names) == 4
    image = model.unet.conditioning.render(torch.tensor([[[0, 3], [2, 1]]], dtype=torch.uint8))
    assert image.shape == (1, 4, 16, 16)
    assert image[0, :, 0, 0].tolist() == [1, 0, 0, 0] and image[0, :, 0, 15].tolist() == [0, 0, 0, 1]


def test_a_class_prompt_changes_only_its_class_region(tiny_pipeline):
    shape = (32, 64)
    labels = np.ones(shape, np.uint8)
    labels[:, 32:] = 2

    def run(stroma_prompt: str) -> torch.Tensor:
        options = DiffusersOptions(pipeline=tiny_pipeline, prompt="tissue",
                                   class_prompts={"tumour": "tumour cells", 2: stroma_prompt})  # fmt: skip
        model, _ = load_diffusers(options)
        sampler = _sampler(model, steps=1)
        return sampler.run(sampler.initial_state(shape), labels).latent

    a, b = run("loose stroma"), run("dense collagen fibres")
    tumour, stroma = labels == 1, labels == 2
    torch.testing.assert_close(a[:, tumour], b[:, tumour], atol=1e-6, rtol=0)
    assert (a[:, stroma] - b[:, stroma]).abs().mean() > 1e-3


@pytest.mark.parametrize(("scheduler", "eta"), [("ddim", 0.7), ("dpm++", 0.0)])
def test_same_slide_across_batch_sizes_and_resume(tiny_pipeline, scheduler, eta):
    options = DiffusersOptions(pipeline=tiny_pipeline, prompt="tissue", class_prompts={1: "tumour"},
                               scheduler=scheduler)  # fmt: skip
    model, _ = load_diffusers(options)
    shape = (32, 48)
    labels = np.zeros(shape, np.uint8)
    labels[8:24, 5:40] = 1
    steps = 3  # DPM-Solver++ 2M: first order, second order (with the history), first order at the end
    whole = _sampler(model, steps=steps, eta=eta, batch_size=64)
    reference = whole.run(whole.initial_state(shape), labels).latent
    small = _sampler(model, steps=steps, eta=eta, batch_size=8)
    torch.testing.assert_close(small.run(small.initial_state(shape), labels).latent, reference, atol=1e-5, rtol=1e-5)

    first = _sampler(model, steps=steps, eta=eta, batch_size=16)
    halfway = first.run(first.initial_state(shape), labels, stop_at=1)
    assert halfway.latent.shape[0] == 4 + whole.history_channels  # a multistep solver's history is in the state
    resumed = _sampler(model, steps=steps, eta=eta, batch_size=32).run(
        SamplerState(halfway.latent.clone(), halfway.step), labels
    )
    assert resumed.latent.shape == reference.shape
    torch.testing.assert_close(resumed.latent, reference, atol=1e-5, rtol=1e-5)
