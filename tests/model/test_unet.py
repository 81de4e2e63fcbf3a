import torch

from napari_diffinfinite.model.config import UNetConfig
from napari_diffinfinite.model.unet import ImageUNet, MaskUNet


def test_image_unet_class_is_largest_label_and_reduction_is_exact():
    torch.manual_seed(1)
    net = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2, 4), channels=4, num_classes=5)).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([999, 10])
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 4:12, 4:12] = 3
    with torch.no_grad():
        fast = net(x, t, mask)
        net.set_attention_reduction(False)
        direct = net(x, t, mask)
    assert fast.shape == x.shape
    assert torch.allclose(fast, direct, atol=1e-4)


def test_official_parameter_names():
    net = ImageUNet(UNetConfig(dim=8, dim_mults=(1, 2, 4), channels=4, num_classes=5, block_per_layer=2))
    keys = set(net.state_dict())
    for key in [
        "init_conv.weight", "time_mlp.1.weight", "time_mlp.3.weight", "classes_emb.weight", "classes_mlp.0.weight",
        "downs.0.0.mlp.1.weight", "downs.0.0.block1.proj.weight", "downs.0.0.block1.norm.weight",
        "downs.0.2.fn.norm.g", "downs.0.2.fn.fn.to_q.weight", "downs.0.2.fn.fn.to_kv.weight",
        "downs.0.2.fn.fn.to_out.bias", "downs.0.3.weight", "downs.2.3.weight", "mid_attn.fn.fn.to_q.weight",
        "ups.0.0.res_conv.weight", "ups.0.3.1.weight", "final_res_block.res_conv.weight", "final_conv.weight",
    ]:  # fmt: skip
        assert key in keys, key


def test_mask_unet_null_embedding_changes_output():
    torch.manual_seed(0)
    net = MaskUNet(UNetConfig(dim=8, dim_mults=(1, 2, 4, 8), channels=4, num_classes=2)).eval()
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), torch.tensor([1, 1])
    with torch.no_grad():
        cond = net(x, t, c)
        null = net(x, t, c, torch.tensor([True, False]))
    assert torch.allclose(cond[1], null[1])
    assert not torch.allclose(cond[0], null[0])
    assert "null_classes_emb" in net.state_dict() and "mid_attn.fn.fn.to_qkv.weight" in net.state_dict()
