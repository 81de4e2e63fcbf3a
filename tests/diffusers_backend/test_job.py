"""A diffusers slide through the one generation job: store, provenance, resume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffinfinite import engine
from napari_diffinfinite.diffusers_backend.model import DiffusersOptions
from napari_diffinfinite.errors import SettingsError, StoreError
from napari_diffinfinite.progress import Cancelled, CancelToken
from napari_diffinfinite.slide.store import SlideStore

SIZE = (768, 1024)  # (H, W): a 1024 x 768 px slide


def _canvas() -> np.ndarray:
    canvas = np.zeros((96, 128), np.uint8)
    canvas[10:80, 20:70] = 1
    canvas[30:90, 60:120] = 2
    return canvas


def _request(out, options, *, size=SIZE, steps=2, **kwargs) -> engine.GenerateRequest:
    settings = engine.GenerateSettings(steps=steps, seed=7, batch_size=64, device="cpu", checkpoint_every_s=0)
    layout = kwargs.pop("layout", engine.LayoutSource(canvas=_canvas()))
    return engine.GenerateRequest(out=out, size=size, diffusers=options, layout=layout, settings=settings, **kwargs)


@pytest.mark.slow
def test_controlnet_slide_of_1024_by_768_with_class_prompts(tmp_path, tiny_pipeline, tiny_controlnet):
    options = DiffusersOptions(
        pipeline=tiny_pipeline, prompt="H&E slide", negative_prompt="blurry", controlnet=tiny_controlnet,
        class_prompts={"tumour": "high grade tumour", "stroma": "loose stroma"},
    )  # fmt: skip
    events = []
    store = engine.run_generate(_request(tmp_path / "slide.zarr", options), progress=events.append)
    assert tuple(store.shape) == SIZE and store.provenance["complete"] is True
    image = store.image_level(0)[:]
    assert image.shape == (3, *SIZE) and image.std() > 0
    p = store.provenance
    d = p["diffusers"]
    assert d["pipeline"]["path"] == str(tiny_pipeline) and len(d["pipeline"]["sha256"]) == 64
    assert d["controlnet"]["path"] == str(tiny_controlnet) and len(d["controlnet"]["sha256"]) == 64
    assert d["prompt"] == "H&E slide" and d["negative_prompt"] == "blurry"
    assert d["class_prompts"] == {"1": "high grade tumour", "2": "loose stroma"}
    assert d["scheduler"] == "ddim" and d["guidance_scale"] == 7.5 and d["conditioning"] == "colors"
    assert p["sampler"] == "parallel random-patch DDIMScheduler" and p["omega"] == 6.5
    assert store.class_names == ["unknown", "tumour", "stroma"]
    assert any(e.stage == "sample" and e.preview is not None for e in events)
    assert any(e.stage == "decode" for e in events)


@pytest.mark.slow
def test_interrupted_slide_resumes_only_with_the_same_prompt(tmp_path, tiny_pipeline):
    options = DiffusersOptions(pipeline=tiny_pipeline, prompt="H&E slide", scheduler="dpm++")
    layout = engine.LayoutSource(label=1)
    small = {"size": (256, 384), "steps": 3}  # DPM-Solver++ 2M uses its history at the second step
    reference = engine.run_generate(_request(tmp_path / "ref.zarr", options, layout=layout, **small))
    reference = reference.image_level(0)[:]
    token = CancelToken()

    def progress(event):
        if event.stage == "sample" and event.done >= 1000:
            token.cancel()  # after the first step: the state holds the solver's history

    with pytest.raises(Cancelled):
        engine.run_generate(_request(tmp_path / "cut.zarr", options, layout=layout, **small), progress=progress,
                            cancel=token)  # fmt: skip
    other = DiffusersOptions(pipeline=tiny_pipeline, prompt="IHC slide", scheduler="dpm++")
    with pytest.raises(StoreError, match=r"other conditioning \(prompt: store 'H&E slide' vs now 'IHC slide'\)"):
        engine.run_generate(_request(tmp_path / "cut.zarr", other, layout=engine.LayoutSource(), resume=True, **small))
    resumed = engine.run_generate(
        _request(tmp_path / "cut.zarr", options, layout=engine.LayoutSource(), resume=True, **small)
    )
    np.testing.assert_array_equal(resumed.image_level(0)[:], reference)
    assert SlideStore.open(tmp_path / "cut.zarr").provenance["complete"] is True


def test_diffusers_request_is_checked_before_loading(tmp_path, tiny_pipeline):
    with pytest.raises(SettingsError, match="leave out --model and --vae"):
        engine.run_generate(_request(tmp_path / "a.zarr", DiffusersOptions(pipeline=tiny_pipeline), image_model="x"))
    with pytest.raises(SettingsError, match="give the layout"):
        layout = engine.LayoutSource(mask_model="default")
        engine.run_generate(_request(tmp_path / "b.zarr", DiffusersOptions(pipeline=tiny_pipeline), layout=layout))
    with pytest.raises(SettingsError, match="DPM-Solver\\+\\+ takes none"):
        request = _request(tmp_path / "c.zarr", DiffusersOptions(pipeline=tiny_pipeline, scheduler="dpm++"))
        request.settings.eta = 0.5
        engine.run_generate(request)
    assert not any((tmp_path / name).exists() for name in ("a.zarr", "b.zarr", "c.zarr"))
