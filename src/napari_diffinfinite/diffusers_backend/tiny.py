"""Tiny random-init diffusers pipelines, ControlNets and LoRA files, written in diffusers' layout.

For tests, the GUI test and trying the backend without downloading anything: a
``UNet2DConditionModel``, ``AutoencoderKL`` (8x, like Stable Diffusion's), ``CLIPTextModel``
and a ``CLIPTokenizer`` whose vocabulary (one token per byte, BPE with no merges) is written
here, a ``DDIMScheduler`` with Stable Diffusion's settings; all saved as safetensors. Outputs
are noise: the weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_DIM = 32
MAX_TOKENS = 16


def _byte_symbols() -> list[str]:
    """The 256 characters GPT-2/CLIP byte-level BPE uses for bytes (``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> int:
    """A CLIP tokenizer with one token per byte (and per word-final byte); returns its vocabulary size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def tiny_components(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 32) -> dict:
    """The components of a tiny Stable Diffusion pipeline (random weights, seeded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=sample_size * 8,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )  # fmt: skip
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_config": CLIPTextConfig,
        "text_model": CLIPTextModel,
    }


def write_tiny_pipeline(folder: str | Path, *, seed: int = 0, prediction_type: str = "epsilon",
                        sample_size: int = 32) -> Path:  # fmt: skip
    """A tiny random-init Stable Diffusion pipeline folder (safetensors) at ``folder``."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    parts = tiny_components(seed, prediction_type, sample_size)
    tokenizer_dir = folder.parent / f".{folder.name}-tokenizer"
    vocab_size = write_tokenizer(tokenizer_dir)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed + 1)
    text_encoder = parts["text_model"](
        parts["text_config"](
            vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=TEXT_DIM,
        )
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=text_encoder, tokenizer=tokenizer, unet=parts["unet"],
        scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        file.unlink()
    tokenizer_dir.rmdir()
    return folder


def write_tiny_controlnet(folder: str | Path, *, seed: int = 0, conditioning_channels: int = 3,
                          classes: dict | None = None) -> Path:  # fmt: skip
    """A tiny random-init ControlNet matching :func:`write_tiny_pipeline`'s UNet; its zero
    convolutions get random weights too, so the layout visibly changes the output."""
    from diffusers import ControlNetModel

    folder = Path(folder)
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=TEXT_DIM, norm_num_groups=4,
        attention_head_dim=4, conditioning_embedding_out_channels=(4, 4, 4, 4),
        conditioning_channels=conditioning_channels,
    )  # fmt: skip
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(module.weight, std=0.3)
        torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=0.3)
    controlnet.save_pretrained(folder, safe_serialization=True)
    if classes is not None:
        (folder / "diffinfinite.json").write_text(json.dumps(classes))
    return folder


def write_tiny_lora(pipeline: str | Path, folder: str | Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA for the UNet of ``pipeline``, saved as diffusers' training scripts save it."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet", use_safetensors=True)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))  # fmt: skip
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder), unet_lora_layers=layers, safe_serialization=True
    )
    return Path(folder) / "pytorch_lora_weights.safetensors"
