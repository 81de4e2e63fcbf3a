import torch

from napari_diffinfinite.model.config import UNetConfig
from napari_diffinfinite.model.unet import ImageUNet
from napari_diffinfinite.sampling.guidance import GuidedDenoiser


def _official_eps(unet, x, t, labels, scale):
    """The official per-label loop: for each label, cond with its binary mask * label and (if the
    label is not 0) an unconditional pass with label 0, guided, composited by the label's mask."""
    eps = torch.zeros_like(x)
    for i in range(len(x)):
        for label in torch.unique(labels[i]).tolist():
            region = (labels[i] == label).float()[None, None]
            ts = torch.tensor([t])
            cond = unet(x[i : i + 1], ts, region * label)
            if label != 0:
                null = unet(x[i : i + 1], ts, torch.zeros_like(region))
                cond = null + (cond - null) * scale
            eps[i] += (cond * region)[0]
    return eps


def test_batched_guidance_equals_official_loop():
    torch.manual_seed(0)
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    x = torch.randn(3, 4, 16, 16)
    labels = torch.zeros(3, 16, 16, dtype=torch.uint8)
    labels[0, :, 8:] = 2
    labels[1] = 1
    labels[2, :5] = 3
    labels[2, 5:, :4] = 1
    for omega in (0.0, 3.0):
        den = GuidedDenoiser(unet, omega=omega, max_batch=2)
        with torch.no_grad():
            ours = den(x, 500, labels)
            reference = _official_eps(unet, x, 500, labels, omega + 1)
        assert torch.allclose(ours, reference, atol=1e-5), omega


def test_unconditional_pass_runs_once_per_patch():
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    labels = torch.zeros(2, 16, 16, dtype=torch.uint8)
    labels[:, :, :5], labels[:, :, 5:10], labels[:, :, 10:] = 1, 2, 3
    den = GuidedDenoiser(unet, omega=3.0)
    with torch.no_grad():
        den(torch.randn(2, 4, 16, 16), 10, labels)
    # 2 patches x (1 unconditional + 3 labels); the official loop needs 2 x 3 x 2 = 12
    assert den.count.network == 8


def test_omega_zero_skips_unconditional_where_every_pixel_is_labelled():
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    labels = torch.ones(2, 16, 16, dtype=torch.uint8)
    labels[1, :3] = 0
    den = GuidedDenoiser(unet, omega=0.0)
    with torch.no_grad():
        den(torch.randn(2, 4, 16, 16), 10, labels)
    assert den.count.network == 3  # cond for both, unconditional only for the patch with label 0


def test_out_of_memory_retries_at_half_batch(monkeypatch):
    torch.manual_seed(0)
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    x = torch.randn(6, 4, 16, 16)
    labels = torch.ones(6, 16, 16, dtype=torch.uint8)
    expected = GuidedDenoiser(unet, omega=1.0, max_batch=16)(x, 100, labels)

    real_forward = unet.forward
    sizes = []

    def limited(x_, t_, m_):
        sizes.append(len(x_))
        if len(x_) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(x_, t_, m_)

    monkeypatch.setattr(unet, "forward", limited)
    den = GuidedDenoiser(unet, omega=1.0, max_batch=12)
    got = den(x, 100, labels)
    assert den.max_batch == 3 and sizes[:3] == [12, 6, 3]
    assert torch.allclose(got, expected, atol=1e-5)


def test_other_runtime_errors_are_not_swallowed(monkeypatch):
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    monkeypatch.setattr(unet, "forward", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    import pytest

    with pytest.raises(RuntimeError, match="shape mismatch"):
        GuidedDenoiser(unet, omega=1.0)(torch.randn(1, 4, 16, 16), 1, torch.ones(1, 16, 16, dtype=torch.uint8))
