import pytest
import torch

from napari_diffinfinite.model.blocks import ChannelLayerNorm, MaskCrossAttention, WeightStandardizedConv2d


@pytest.mark.parametrize("pattern", ["mixed", "empty", "full"])
def test_reduced_cross_attention_equals_direct(pattern):
    torch.manual_seed(0)
    attn = MaskCrossAttention(dim=16, heads=4, dim_head=8).eval()
    x = torch.randn(3, 16, 8, 8)
    mask = torch.zeros(3, 1, 32, 32)
    if pattern == "mixed":
        mask[0, :, :10, :] = 2
        mask[1, :, 5:20, 3:30] = 1
        mask[2] = 3
    elif pattern == "full":
        mask[:] = 1
    with torch.no_grad():
        reduced = attn(x, mask)
        attn.reduced = False
        direct = attn(x, mask)
    assert torch.allclose(reduced, direct, atol=1e-5)


def test_reduced_cross_attention_memory_is_linear():
    """At 64x64 the direct form builds a 4096x4096 attention matrix per head; the reduced one does not."""
    attn = MaskCrossAttention(dim=8, heads=4, dim_head=8).eval()
    x = torch.randn(1, 8, 64, 64)
    mask = torch.ones(1, 1, 64, 64)
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        attn(x, mask)
    peak = max(e.cpu_memory_usage for e in prof.key_averages())
    assert peak < 4 * 4096 * 4096  # one float32 attention matrix of one head


def test_standardized_weight_cache_follows_weight_updates():
    conv = WeightStandardizedConv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        first = conv(x)
        conv.weight.mul_(torch.linspace(0.5, 2, 4)[:, None, None, None]).add_(0.1)
        second = conv(x)
    w = conv.weight
    expected_w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = torch.nn.functional.conv2d(x, expected_w, conv.bias, padding=1)
    assert not torch.allclose(first, second)
    assert torch.allclose(second, expected, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_channel_layer_norm_is_upstreams_formula(memory_format):
    """The fused kernel computes upstream's (x - mean) / sqrt(var + eps) * g over channels, in
    either memory format, with gradients for x and g."""
    torch.manual_seed(0)
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.g.copy_(torch.randn(1, 6, 1, 1))
    x = (torch.randn(2, 6, 5, 7) * 3 + 1).contiguous(memory_format=memory_format).requires_grad_()
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    expected = (x - x.mean(dim=1, keepdim=True)) * (var + 1e-5).rsqrt() * norm.g
    out = norm(x)
    assert out.shape == x.shape and torch.allclose(out, expected, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (x, norm.g))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, norm.g))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected_grads))
