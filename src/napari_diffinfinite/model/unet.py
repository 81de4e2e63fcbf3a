"""DiffInfinite's two denoising UNets, state-dict compatible with the official checkpoints.

* :class:`ImageUNet` is conditioned on a label mask: a class embedding of the largest label
  in the patch, and cross-attention blocks whose queries come from the binarised mask.
* :class:`MaskUNet` is a class-conditioned UNet (with a learned null class for guidance)
  that denoises VAE latents of small mask images.

Both predict the noise (``pred_noise`` objective) of a DDPM with 1000 training steps.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import (
    Attention,
    LinearAttention,
    MaskCrossAttention,
    PreNorm,
    Residual,
    ResnetBlock,
    SinusoidalPosEmb,
    downsample,
    upsample,
)
from .config import UNetConfig


class _UNetBase(nn.Module):
    """The layout shared by both networks; subclasses choose the attention blocks."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.channels = config.channels
        # a cascade stage's input is its latent with the lower level's condition concatenated
        self.init_conv = nn.Conv2d(config.channels + config.condition_channels, dim, 7, padding=3)

        dims = [dim, *(dim * m for m in config.dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = classes_dim = dim * 4

        def resnet(d_in: int, d_out: int) -> ResnetBlock:
            return ResnetBlock(
                d_in, d_out, time_emb_dim=time_dim, classes_emb_dim=classes_dim, groups=config.resnet_block_groups
            )

        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        self.classes_emb = nn.Embedding(config.num_classes, dim)
        self.classes_mlp = nn.Sequential(nn.Linear(dim, classes_dim), nn.GELU(), nn.Linear(classes_dim, classes_dim))

        self.downs = nn.ModuleList()
        for index, (d_in, d_out) in enumerate(in_out):
            last = index == len(in_out) - 1
            layer = [resnet(d_in, d_in) for _ in range(config.block_per_layer)]
            layer.append(Residual(PreNorm(d_in, self.level_attention(d_in))))
            layer.append(nn.Conv2d(d_in, d_out, 3, padding=1) if last else downsample(d_in, d_out))
            self.downs.append(nn.ModuleList(layer))

        mid = dims[-1]
        self.mid_block1 = resnet(mid, mid)
        self.mid_attn = Residual(PreNorm(mid, self.middle_attention(mid)))
        self.mid_block2 = resnet(mid, mid)

        self.ups = nn.ModuleList()
        for index, (d_in, d_out) in enumerate(reversed(in_out)):
            last = index == len(in_out) - 1
            layer = [resnet(d_out + d_in, d_out) for _ in range(config.block_per_layer)]
            layer.append(Residual(PreNorm(d_out, self.level_attention(d_out))))
            layer.append(nn.Conv2d(d_out, d_in, 3, padding=1) if last else upsample(d_out, d_in))
            self.ups.append(nn.ModuleList(layer))

        self.out_dim = config.channels
        self.final_res_block = resnet(dim * 2, dim)
        self.final_conv = nn.Conv2d(dim, self.out_dim, 1)

    def level_attention(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def middle_attention(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def _attend(self, attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return attn(x) if mask is None else attn(x, mask)

    def _run(self, x: torch.Tensor, time: torch.Tensor, class_emb: torch.Tensor, mask: torch.Tensor | None):
        c = self.classes_mlp(class_emb)
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time)
        skips = []
        for *blocks, attn, down in self.downs:
            for block in blocks[:-1]:
                x = block(x, t, c)
                skips.append(x)
            x = blocks[-1](x, t, c)
            x = self._attend(attn, x, mask)
            skips.append(x)
            x = down(x)
        x = self.mid_block1(x, t, c)
        x = self._attend(self.mid_attn, x, mask)
        x = self.mid_block2(x, t, c)
        for *blocks, attn, up in self.ups:
            for block in blocks:
                x = block(torch.cat((x, skips.pop()), dim=1), t, c)
            x = up(self._attend(attn, x, mask))
        x = self.final_res_block(torch.cat((x, r), dim=1), t, c)
        return self.final_conv(x)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ImageUNet(_UNetBase):
    """Mask-conditioned noise predictor of DiffInfinite's image model.

    ``forward(x, time, mask, condition=None)``: ``mask`` is a (B, 1, h, w) label image at
    latent resolution (or any integer multiple of it). Label 0 is "unknown": a zero mask gives
    the unconditional prediction used by classifier-free guidance. ``condition`` (cascade
    stages only, ``config.condition_channels`` channels at latent resolution) is the upsampled
    lower magnification, concatenated to ``x`` (as Imagen's and URCDM's super-resolution
    stages do); guidance never drops it.
    """

    def level_attention(self, dim: int) -> nn.Module:
        return MaskCrossAttention(dim, self.config.attention_heads, self.config.attention_dim_head)

    middle_attention = level_attention

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        classes = mask.reshape(mask.shape[0], -1).amax(dim=-1).long()
        if (condition is None) != (self.config.condition_channels == 0):
            raise ValueError(
                "a cascade stage needs the lower level as its condition"
                if condition is None
                else "this network takes no lower-level condition (it is not a cascade stage)"
            )
        if condition is not None:
            x = torch.cat((x, condition.to(x.dtype)), dim=1)
        return self._run(x, time, self.classes_emb(classes), mask)

    def set_attention_reduction(self, enabled: bool) -> None:
        """Switch between the exact O(N) attention reduction and the direct O(N^2) form."""
        for module in self.modules():
            if isinstance(module, MaskCrossAttention):
                module.reduced = enabled


class MaskUNet(_UNetBase):
    """Class-conditioned noise predictor of DiffInfinite's mask model.

    ``forward(x, time, classes, null=None)``: ``null`` (bool, shape (B,)) selects the learned
    null class embedding for the unconditional branch of guidance.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        self.null_classes_emb = nn.Parameter(torch.randn(config.dim))

    def level_attention(self, dim: int) -> nn.Module:
        return LinearAttention(dim, self.config.attention_heads, self.config.attention_dim_head)

    def middle_attention(self, dim: int) -> nn.Module:
        return Attention(dim, self.config.attention_heads, self.config.attention_dim_head)

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, classes: torch.Tensor, null: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.classes_emb(classes.long())
        if null is not None:
            emb = torch.where(null[:, None], self.null_classes_emb.to(emb.dtype)[None, :], emb)
        return self._run(x, time, emb, None)


def build_unet(kind: str, config: UNetConfig) -> _UNetBase:
    """Instantiate the network of ``kind`` ("image" or "mask")."""
    if kind == "image":
        return ImageUNet(config)
    if kind == "mask":
        return MaskUNet(config)
    raise ValueError(f"unknown model kind {kind!r}; expected 'image' or 'mask'")
