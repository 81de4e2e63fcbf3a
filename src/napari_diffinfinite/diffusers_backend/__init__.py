"""Any-size slides from diffusers models: a Stable Diffusion-style pipeline (text prompts,
optionally a ControlNet fed the label layout, optionally LoRA weights) driven by the
parallel random-patch sampler.

The pieces: :mod:`.folder` finds and checks a pipeline folder (safetensors only, nothing
downloaded) and loads it; :mod:`.conditioning` renders the label layout under a patch as the
ControlNet's conditioning image; :mod:`.text` encodes the prompt, negative prompt and
per-class prompts; :mod:`.schedule` drives a diffusers scheduler through its ``step`` API per
latent pixel; :mod:`.denoiser` runs the network on batches of patches with classifier-free
guidance composited by the layout; :mod:`.model` puts them together as the image model the
engine's job samples with. Nothing here imports Qt or napari; diffusers, transformers (and
peft for LoRA) are imported only when a pipeline is loaded.
"""

from __future__ import annotations

from ..errors import CheckpointError

INSTALL_HINT = "pip install 'napari-diffinfinite[diffusers]'"


def require(*, lora: bool = False) -> None:
    """Refuse, with the install command, when the libraries a diffusers pipeline needs are missing."""
    missing = []
    for name in ("diffusers", "transformers") + (("peft",) if lora else ()):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        what = "LoRA weights need" if lora and missing == ["peft"] else "diffusers pipelines need"
        raise CheckpointError(f"{what} {' and '.join(missing)}, which is not installed; install it: {INSTALL_HINT}")
