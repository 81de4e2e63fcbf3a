"""Codecs between RGB pixels in [0, 1] and the space a diffusion model works in.

* :class:`VAECodec`: the Stable Diffusion 2 VAE (diffusers ``AutoencoderKL``) with
  DiffInfinite's scaling: images in [0, 1] (not [-1, 1]) are encoded and the latent mean
  or sample is divided by ``latent_scale`` (50); decoding multiplies by 50 and clips to [0, 1].
* :class:`IdentityCodec`: pixel-space models; the "latent" is the image scaled to [-1, 1].

Weights are never downloaded: the VAE comes from a local folder or, offline, from the
Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

SD2_REPO = "stabilityai/stable-diffusion-2-base"


class Codec(Protocol):
    name: str
    scale_factor: int  # pixels per latent pixel along each axis
    latent_channels: int
    context: int  # latent pixels of context a tile needs on each side to decode seamlessly

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def tile_decoder(self, latent: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``decode`` for windows of ``latent`` that decodes them as the whole would be."""
        ...


GroupNormStatistics = dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def _group_norms(network: nn.Module, forward: Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Run every GroupNorm of ``network`` through ``forward(module, x)`` inside the block."""
    modules = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
    for module in modules:
        module.forward = lambda x, module=module: forward(module, x)
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # back to the class's forward


def _group_moments(module: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grouped = x.float().reshape(x.shape[0], module.num_groups, -1)
    var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)
    return mean.mean(0), var.mean(0)  # (groups,), over the batch too (batches here have one image)


def record_group_norm_statistics(network: nn.Module, run: Callable[[], object]) -> GroupNormStatistics:
    """The per-group mean and variance every GroupNorm of ``network`` sees during ``run()``."""
    stats: GroupNormStatistics = {}

    def recording(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        stats[module] = _group_moments(module, x)
        return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)

    with _group_norms(network, recording):
        run()
    return stats


@contextmanager
def fixed_group_norm_statistics(network: nn.Module, stats: GroupNormStatistics) -> Iterator[None]:
    """Inside the block, every GroupNorm of ``network`` normalises with the recorded ``stats``
    instead of its input's own: the network becomes local (a window decodes as in the whole)."""

    def fixed(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        mean, var = stats[module]
        n, c = x.shape[:2]
        g = module.num_groups
        grouped = x.reshape(n, g, -1)
        scale = torch.rsqrt(var + module.eps).to(x.dtype)
        y = ((grouped - mean.to(x.dtype)[None, :, None]) * scale[None, :, None]).reshape(x.shape)
        if module.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * module.weight.reshape(shape) + module.bias.reshape(shape)
        return y

    with _group_norms(network, fixed):
        yield


class IdentityCodec:
    """Pixel space: latents are images scaled from [0, 1] to [-1, 1].

    With ``unshuffle`` f > 1, every f x f block of pixels is folded into channels
    (``pixel_unshuffle``): lossless, and f*f fewer positions for the network.
    """

    name = "identity"
    context = 0

    def __init__(self, unshuffle: int = 1) -> None:
        self.scale_factor = unshuffle
        self.latent_channels = 3 * unshuffle**2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2 - 1
        return F.pixel_unshuffle(x, self.scale_factor) if self.scale_factor > 1 else x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.float()
        if self.scale_factor > 1:
            x = F.pixel_shuffle(x, self.scale_factor)
        return ((x + 1) / 2).clamp(0, 1)

    def tile_decoder(self, latent: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Decoding is pointwise: windows decode as the whole does."""
        return self.decode


class VAECodec:
    """The SD-2 VAE with DiffInfinite's scaling (latent = encode(img in [0, 1]) / 50).

    ``signed``: the Stable Diffusion convention instead, images in [-1, 1] (what a diffusers
    pipeline's VAE expects); a diffusers backend passes ``latent_scale = 1 / scaling_factor``,
    so latent = encode(2 * img - 1) * scaling_factor. The downsampling factor and latent
    channels are read from the VAE's config (8 and 4 for the Stable Diffusion VAEs).
    """

    name = "sd2-vae"
    context = 16

    def __init__(self, vae, latent_scale: float = 50.0, sample: bool = True, *, signed: bool = False) -> None:
        self.vae = vae.eval()
        self.latent_scale = latent_scale
        self.sample = sample
        self.signed = signed
        config = getattr(vae, "config", None)
        blocks = getattr(config, "block_out_channels", None)
        self.scale_factor = 2 ** (len(blocks) - 1) if blocks else 8
        self.latent_channels = int(getattr(config, "latent_channels", 4) or 4)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = images * 2 - 1 if self.signed else images
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        latents = dist.sample(generator) if self.sample else dist.mean
        return latents.float() / self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode(latents.to(self.device, self.dtype) * self.latent_scale).sample.float()
        return ((out + 1) / 2 if self.signed else out).clamp(0, 1)

    @torch.no_grad()
    def tile_decoder(self, latent: torch.Tensor, statistics_side: int = 128) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``decode`` for windows of ``latent`` (C, h, w) that decodes them as the whole latent.

        The decoder is not local: its GroupNorms normalise over their whole input and its
        mid-block self-attention attends over all of it, so a window decoded alone shifts in
        tone. Here one pass of the decoder over the whole latent records every GroupNorm's
        per-group mean and variance and the mid-block attention's (normalised) input tokens;
        windows are then decoded with those statistics, and their attention queries attend
        to the whole latent's tokens. A latent larger than ``statistics_side`` latent pixels
        is area-downsampled to that size for the recording pass (the estimate the widely used
        tiled-VAE decoders make), so memory stays bounded whatever the slide size.
        """
        return self.decoder_with_statistics(self.statistics_latent(latent, statistics_side))

    @staticmethod
    def statistics_latent(latent: torch.Tensor, statistics_side: int = 128) -> torch.Tensor:
        """The (1, C, h', w') latent whose decode gives :meth:`tile_decoder` its statistics:
        ``latent`` area-downsampled to at most ``statistics_side`` latent pixels a side."""
        z = latent[None] if latent.dim() == 3 else latent
        side = max(z.shape[-2:])
        if side > statistics_side:
            size = [max(1, round(s * statistics_side / side)) for s in z.shape[-2:]]
            z = F.interpolate(z.float(), size=size, mode="area")
        return z

    @torch.no_grad()
    def decoder_with_statistics(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``decode`` for windows, with the GroupNorm statistics and attention tokens of decoding
        ``z`` (from :meth:`statistics_latent`; several processes that share ``z`` decode alike)."""
        decoder = self.vae.decoder
        attentions = list(getattr(getattr(decoder, "mid_block", None), "attentions", None) or [])
        tokens: dict[nn.Module, torch.Tensor] = {}

        def capture(attention: nn.Module, x: torch.Tensor) -> None:
            norm = attention.group_norm
            normed = x if norm is None else F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            tokens[attention] = normed.flatten(2).transpose(1, 2)  # (1, h*w, C): keys and values of the whole

        with _attention_inputs(attentions, capture):
            stats = record_group_norm_statistics(decoder, lambda: self.decode(z))

        def decode(window: torch.Tensor) -> torch.Tensor:
            with fixed_group_norm_statistics(decoder, stats), _global_attention(attentions, tokens):
                return self.decode(window)

        return decode


@contextmanager
def _wrapped_attention(attentions: list[nn.Module], wrap: Callable[[nn.Module, Callable], Callable]) -> Iterator[None]:
    """Inside the block, each attention module's ``forward`` is ``wrap(attention, original_forward)``."""
    for attention in attentions:
        attention.forward = wrap(attention, attention.forward)
    try:
        yield
    finally:
        for attention in attentions:
            del attention.forward


def _attention_inputs(attentions: list[nn.Module], see: Callable[[nn.Module, torch.Tensor], None]):
    """Show ``see(attention, x)`` every input of the attention modules inside the block."""

    def wrap(attention: nn.Module, original: Callable) -> Callable:
        def forward(x, *args, **kwargs):
            see(attention, x)
            return original(x, *args, **kwargs)

        return forward

    return _wrapped_attention(attentions, wrap)


def _global_attention(attentions: list[nn.Module], tokens: dict[nn.Module, torch.Tensor]):
    """Inside the block, the attention modules attend to the recorded tokens of the whole latent
    (their queries still come from the window; diffusers' ``encoder_hidden_states``)."""

    def wrap(attention: nn.Module, original: Callable) -> Callable:
        context = tokens[attention]

        def forward(x, *args, **kwargs):
            kwargs["encoder_hidden_states"] = context.to(x.dtype).expand(x.shape[0], -1, -1)
            return original(x, *args, **kwargs)

        return forward

    return _wrapped_attention(attentions, wrap)


def load_vae(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load ``AutoencoderKL`` from a VAE folder, a Stable Diffusion folder (``vae/`` inside)
    or a hub id present in the local Hugging Face cache. Never touches the network.

    The folder is checked as a diffusers pipeline's components are
    (:func:`~napari_diffinfinite.diffusers_backend.folder.check_weights`): safetensors only, their
    headers checked first, pickled weights refused unopened (unpickling can run code); the loaded
    weights must be finite."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:  # pragma: no cover - diffusers is a dependency
        raise CheckpointError("the SD-2 VAE needs diffusers: pip install diffusers") from exc
    from ..diffusers_backend.folder import check_finite, check_weights, resolve

    hint = (
        f"pass the folder of the Stable Diffusion 2 VAE (with config.json and diffusion_pytorch_model.safetensors), "
        f"e.g. a local copy of {SD2_REPO}/vae; nothing is downloaded"
    )
    folder = resolve(spec, "VAE")  # a folder, or the snapshot of a cached hub id; a pickle file is refused
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    variant = check_weights(folder, "the VAE")
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True, variant=variant)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load a VAE from {spec!s}: {exc}; {hint}") from None
    check_finite(vae.state_dict().items(), f"the VAE {folder}")
    return vae.to(device=device, dtype=dtype).eval()


def make_codec(
    codec: str,
    vae: str | Path | None = None,
    *,
    latent_scale: float = 50.0,
    pixel_unshuffle: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Codec:
    """The codec named by a model config ("sd2-vae" needs ``vae``: a folder or cached hub id)."""
    if codec == "identity":
        return IdentityCodec(pixel_unshuffle)
    if codec == "sd2-vae":
        if vae is None:
            raise CheckpointError(
                "this model works in Stable Diffusion 2 VAE latents: give the VAE folder "
                f"(--vae PATH; a local copy of {SD2_REPO}, or its vae/ subfolder)"
            )
        return VAECodec(load_vae(vae, device=device, dtype=dtype), latent_scale=latent_scale)
    raise CheckpointError(f"unknown codec {codec!r}; expected 'sd2-vae' or 'identity'")
