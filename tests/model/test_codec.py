import pytest
import torch

from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.model.codec import IdentityCodec, VAECodec, load_vae, make_codec


@pytest.mark.parametrize("unshuffle", [1, 2, 4])
def test_identity_codec_roundtrip(unshuffle):
    codec = IdentityCodec(unshuffle)
    images = torch.rand(2, 3, 16, 16)
    latents = codec.encode(images)
    assert latents.shape == (2, 3 * unshuffle**2, 16 // unshuffle, 16 // unshuffle)
    assert latents.min() >= -1 and latents.max() <= 1
    assert torch.allclose(codec.decode(latents), images, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("sd2") / "vae"
    vae.save_pretrained(folder)
    return folder


def test_vae_codec_scaling(tiny_vae_dir):
    codec = make_codec("sd2-vae", tiny_vae_dir)
    assert isinstance(codec, VAECodec) and codec.scale_factor == 8
    images = torch.rand(1, 3, 32, 32)
    raw = codec.vae.encode(images).latent_dist.mean
    codec.sample = False
    assert torch.allclose(codec.encode(images), raw / 50, atol=1e-6)
    decoded = codec.decode(raw / 50)
    expected = codec.vae.decode(raw).sample.clamp(0, 1)
    assert decoded.shape == (1, 3, 32, 32) and torch.allclose(decoded, expected, atol=1e-5)


def test_vae_from_stable_diffusion_folder(tiny_vae_dir):
    vae = load_vae(tiny_vae_dir.parent)  # the folder holding vae/
    assert vae.config.latent_channels == 4


def test_vae_missing_folder_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        load_vae("stabilityai/stable-diffusion-2-base")
    with pytest.raises(CheckpointError, match="give the VAE folder"):
        make_codec("sd2-vae", None)


class _WritesSentinel:
    """A pickle whose loading would create a file (what a malicious checkpoint does)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_vae_folders_are_checked_like_pipeline_components(tiny_vae_dir, tmp_path):
    import pickle
    import shutil

    from safetensors.torch import load_file, save_file

    sentinel = tmp_path / "pwned"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_vae_dir / "config.json", pickled)
    (pickled / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_WritesSentinel(str(sentinel))))
    with pytest.raises(CheckpointError, match=r"pickled weights \(diffusion_pytorch_model.bin\).*refused"):
        load_vae(pickled)
    with pytest.raises(CheckpointError, match="pickle"):
        load_vae(pickled / "diffusion_pytorch_model.bin")
    assert not sentinel.exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_vae_dir, damaged)
    weights = damaged / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["decoder.conv_out.bias"][0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="decoder.conv_out.bias holds NaN or infinite values"):
        load_vae(damaged)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_vae(damaged)


def test_whole_input_group_norm_statistics_make_a_window_decode_as_in_the_whole():
    from torch import nn

    from napari_diffinfinite.model.codec import fixed_group_norm_statistics, record_group_norm_statistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    x = torch.randn(1, 4, 40, 40) + torch.linspace(-2, 2, 40)  # a trend: windows have other statistics
    with torch.no_grad():
        whole = net(x)
        stats = record_group_norm_statistics(net, lambda: net(x))
        window = x[:, :, 5:25, 10:30]
        with fixed_group_norm_statistics(net, stats):
            fixed = net(window)
        alone = net(window)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # beyond the receptive field of the borders
    assert torch.allclose(fixed[inner], whole[:, :, 5:25, 10:30][inner], atol=1e-5)
    assert not torch.allclose(alone[inner], whole[:, :, 5:25, 10:30][inner], atol=1e-2)
    assert isinstance(net[1].forward, type(net[1].forward)) and "forward" not in vars(net[1])  # restored


def test_tile_decoder_decodes_a_window_as_inside_the_whole_latent(tiny_vae_dir):
    codec = make_codec("sd2-vae", tiny_vae_dir)
    torch.manual_seed(3)
    latent = torch.randn(4, 40, 40) / 50 + torch.linspace(-0.02, 0.02, 40)  # a trend: windows differ from the whole
    with torch.no_grad():
        whole = codec.decode(latent[None])
        window = latent[None, :, :, 8:]  # cut on the left only
        faithful = codec.tile_decoder(latent)(window)
        alone = codec.decode(window)
    # beyond the decoder's receptive field (about 14 latent pixels here) from the cut
    keep = (slice(None), slice(None), slice(None), slice(8 * 16, None))
    expected = whole[:, :, :, 8 * 8 :][keep]
    assert (faithful[keep] - expected).abs().max() < 1e-4
    assert (alone[keep] - expected).abs().max() > 1e-3
