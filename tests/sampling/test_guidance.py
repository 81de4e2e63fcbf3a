import numpy as np
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


def _per_patch_guidance(unet, scale, x, t, labels):
    """The landed per-patch implementation, kept as the oracle of the vectorised one: a
    host loop over patches and their labels, one unconditional pass per patch."""
    b = x.shape[0]
    guided = scale != 1.0
    null_index, cond_index, cond_label = [], [], []
    for i in range(b):
        present = torch.unique(labels[i]).tolist()
        if guided or 0 in present:
            null_index.append(i)
        for label in present:
            if label != 0:
                cond_index.append(i)
                cond_label.append(label)
    n_null = len(null_index)
    cond_lab = torch.tensor(cond_label, dtype=labels.dtype)[:, None, None]
    inputs = torch.cat([x[null_index], x[cond_index]])
    cond_masks = torch.where(labels[cond_index] == cond_lab, cond_lab, 0)
    masks = torch.cat([torch.zeros_like(labels[:n_null]), cond_masks])[:, None].float()
    out = unet(inputs, torch.full((len(inputs),), t, dtype=torch.long), masks)
    eps = torch.zeros_like(x)
    row_of = {i: j for j, i in enumerate(null_index)}
    if n_null:
        eps[null_index] = out[:n_null]
    for j, (i, label) in enumerate(zip(cond_index, cond_label)):
        cond = out[n_null + j]
        if guided:
            cond = out[row_of[i]] + (cond - out[row_of[i]]) * scale
        eps[i] = torch.where((labels[i] == label)[None], cond, eps[i])
    return eps


class _Pointwise(torch.nn.Module):
    """Per-pixel stand-in network (batch composition cannot change its numbers)."""

    def forward(self, x, t, mask):
        return torch.sin(3 * x + 0.7 * mask + 1e-3 * t[:, None, None, None].float())


def _multi_label_patches():
    torch.manual_seed(1)
    labels = torch.zeros(5, 16, 16, dtype=torch.uint8)
    labels[0, :, 8:] = 2  # 0 and 2
    labels[1] = 1  # one label, no 0
    labels[2, :5], labels[2, 5:, :4], labels[2, 5:, 4:9] = 3, 1, 2  # 0, 1, 2, 3
    labels[3, ::2] = 3  # stripes of 0 and 3
    labels[4, :, :3], labels[4, :, 3:] = 2, 1  # 1 and 2, no 0
    return torch.randn(5, 4, 16, 16), labels


def test_vectorised_guidance_is_bit_identical_to_the_per_patch_implementation():
    x, labels = _multi_label_patches()
    for omega in (0.0, 1.5, 3.0):
        den = GuidedDenoiser(_Pointwise(), omega=omega, max_batch=3)
        with torch.no_grad():
            assert torch.equal(den(x, 321, labels), _per_patch_guidance(_Pointwise(), omega + 1, x, 321, labels)), omega


def test_vectorised_guidance_equals_the_per_patch_implementation_on_a_unet():
    torch.manual_seed(0)
    unet = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=4)).eval()
    x, labels = _multi_label_patches()
    for omega in (0.0, 3.0):
        with torch.no_grad():
            ours = GuidedDenoiser(unet, omega=omega, max_batch=4)(x, 250, labels)
            reference = _per_patch_guidance(unet, omega + 1, x, 250, labels)
        assert torch.allclose(ours, reference, atol=1e-5), omega


def test_static_shapes_pad_every_call_to_the_batch_size():
    sizes = []

    class Recording(_Pointwise):
        def forward(self, x, t, mask):
            sizes.append(len(x))
            return super().forward(x, t, mask)

    x, labels = _multi_label_patches()
    padded = GuidedDenoiser(Recording(), omega=3.0, max_batch=4, static_shapes=True)
    with torch.no_grad():
        got = padded(x, 10, labels)
    assert set(sizes) == {4}
    assert torch.equal(got, GuidedDenoiser(_Pointwise(), omega=3.0, max_batch=4)(x, 10, labels))


def test_mask_model_guidance_backs_off_on_out_of_memory(monkeypatch):
    from napari_diffinfinite.model.unet import MaskUNet
    from napari_diffinfinite.sampling.guidance import ClassGuidedDenoiser

    torch.manual_seed(0)
    unet = MaskUNet(UNetConfig(dim=8, dim_mults=(1, 2), channels=4, num_classes=3)).eval()
    x = torch.randn(6, 4, 16, 16)
    labels = torch.ones(6, 16, 16, dtype=torch.uint8)
    labels[3:] = 2
    with torch.no_grad():
        expected = ClassGuidedDenoiser(unet, omega=1.0, max_batch=16)(x, 100, labels)
    real_forward = unet.forward
    sizes = []

    def limited(*args):
        sizes.append(len(args[0]))
        if len(args[0]) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args)

    monkeypatch.setattr(unet, "forward", limited)
    den = ClassGuidedDenoiser(unet, omega=1.0, max_batch=12)
    with torch.no_grad():
        got = den(x, 100, labels)
    assert den.max_batch == 3 and sizes[:3] == [12, 6, 3]
    assert torch.allclose(got, expected, atol=1e-5)


def test_patches_in_one_class_take_the_one_pass_path_bit_for_bit():
    """Patches that lie in one labelled class, ordered first, are guided by one elementwise pass;
    the result is bit for bit the per-patch implementation's, for the batch and its order."""
    x, mixed = _multi_label_patches()
    labels = torch.cat([torch.full((3, 16, 16), 2, dtype=torch.uint8), mixed])
    labels[1] = 1
    x = torch.cat([torch.randn(3, 4, 16, 16), x])
    den = GuidedDenoiser(_Pointwise(), omega=3.0, max_batch=64)
    present = np.stack([[bool((labels[i] == lab).any()) for lab in range(4)] for i in range(len(labels))])
    order = den.order(present)
    assert order[:4].tolist() == [0, 1, 2, 4]  # the uniform ones first, stable; patch 4 ("one label, no 0") too
    plan = den.plan(present[order])
    assert plan.uniform == 4
    with torch.no_grad():
        ours = den(x[order], 77, labels[order], plan)
        reference = _per_patch_guidance(_Pointwise(), 4.0, x[order], 77, labels[order])
    assert torch.equal(ours, reference)
    for p0, p1 in ((0, 2), (2, 6), (5, 8)):  # batches that split the uniform run or miss it
        span = plan.span(p0, p1)
        assert span.uniform == max(0, min(4 - p0, p1 - p0))
        with torch.no_grad():
            assert torch.equal(den(x[order][p0:p1], 77, labels[order][p0:p1], span), reference[p0:p1])


def test_unguided_and_mask_model_denoisers_keep_the_patch_order():
    present = np.array([[True, True], [False, True], [True, False]])
    assert GuidedDenoiser(_Pointwise(), omega=0.0).order(present).tolist() == [0, 1, 2]
    assert GuidedDenoiser(_Pointwise(), omega=3.0).order(present).tolist() == [1, 0, 2]
