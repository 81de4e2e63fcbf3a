"""Building blocks of DiffInfinite's UNets.

Module and parameter names follow the official implementation exactly, so that its
state dicts load without renaming (``block1.proj.weight``, ``fn.fn.to_q.weight``, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _eps(dtype: torch.dtype) -> float:
    # The official code uses a larger epsilon in reduced precision.
    return 1e-5 if dtype == torch.float32 else 1e-3


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised (zero mean, unit variance per output channel).

    In inference the standardised kernel is cached, since the weights do not change
    between the thousands of patch evaluations of a slide.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        key = (w._version, w.dtype, w.device, w.data_ptr())
        if not (self.training or torch.is_grad_enabled()) and self._cache and self._cache[0] == key:
            return self._cache[1]
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        standardized = (w - mean) * (var + _eps(w.dtype)).rsqrt()
        if not (self.training or torch.is_grad_enabled()):
            self._cache = (key, standardized)
        return standardized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of a (B, C, H, W) tensor, with a gain only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x - mean) / sqrt(var + eps) * g over channels, as upstream, by the fused layer-norm
        # kernel on a channels-last view: 2-9x faster than separate var/mean/arithmetic on CPU
        # (benchmarks/bench_cpu_network.py), and the result is channels-last in memory
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.g.reshape(-1), None, _eps(x.dtype)).permute(
            0, 3, 1, 2
        )


class PreNorm(nn.Module):
    """Normalise the input, then apply ``fn`` (extra arguments such as a mask pass through)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return self.fn(self.norm(x), *args)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return self.fn(x, *args) + x


def upsample(dim: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


def downsample(dim: int, dim_out: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim_out, 4, 2, 1)


class Block(nn.Module):
    """Weight-standardised 3x3 conv, group norm, optional FiLM scale/shift, SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(p=0.05)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.dropout(self.act(x))


class ResnetBlock(nn.Module):
    """Two blocks with a residual path, conditioned on time and class embeddings (FiLM)."""

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int, classes_emb_dim: int, groups: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim + classes_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
        cond = self.mlp(torch.cat((time_emb, class_emb), dim=-1))[:, :, None, None]
        h = self.block1(x, scale_shift=cond.chunk(2, dim=1))
        return self.block2(h) + self.res_conv(x)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    """Linear-complexity self-attention (mask model)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax self-attention (mask model's middle block)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (_split_heads(t, self.heads).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (b, heads, n, d)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class MaskCrossAttention(nn.Module):
    """Cross-attention whose queries come from the (max-pooled, binarised) label mask.

    The queries are a bias-free 1x1 convolution of a mask that is 0 or 1 in every channel,
    so each query is either the zero vector or one fixed vector ``q1`` per head. Softmax
    attention then has only two distinct rows: a zero query attends uniformly (the mean of
    the values) and ``q1`` attends with ``softmax(q1 . k)``. ``reduced=True`` (the default)
    computes those two rows and broadcasts them by the mask: O(N) time and memory instead of
    O(N^2), with the same result as the direct computation (``reduced=False``).
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_kv = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.to_q = nn.Conv2d(dim, hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)
        self.reduced = True

    @staticmethod
    def binary_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
        """(B, 1, H, W) labels -> (B, 1, size, size) bool: any labelled pixel in each pooled cell."""
        k = mask.shape[-1] // size
        return F.max_pool2d(mask.float(), (k, k)) > 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        inside = self.binary_mask(mask, h)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(x).chunk(2, dim=1))
        if not self.reduced:
            return self._direct(inside, k, v, (b, c, h, w), x.dtype)
        q1 = self.to_q.weight.sum(dim=(1, 2, 3)).to(x.dtype).reshape(self.heads, -1) * self.scale
        attn = torch.einsum("hd,bhdn->bhn", q1, k).softmax(dim=-1)
        out_inside = torch.einsum("bhn,bhdn->bhd", attn, v).reshape(b, -1)
        out_outside = v.mean(dim=-1).reshape(b, -1)
        weight = self.to_out.weight.reshape(self.to_out.out_channels, -1)
        out_inside = F.linear(out_inside, weight, self.to_out.bias)[:, :, None, None]
        out_outside = F.linear(out_outside, weight, self.to_out.bias)[:, :, None, None]
        return torch.where(inside, out_inside, out_outside)

    def _direct(self, inside, k, v, shape, dtype) -> torch.Tensor:
        b, c, h, w = shape
        q = self.to_q(inside.to(dtype).expand(b, c, h, w))
        q = _split_heads(q, self.heads) * self.scale
        attn = torch.einsum("bhdi,bhdj->bhij", q, k).softmax(dim=-1)
        out = torch.einsum("bhij,bhdj->bhid", attn, v)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))
