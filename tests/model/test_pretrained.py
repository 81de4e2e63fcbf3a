import json
import os
import stat

import pytest
import torch

from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.model.config import ModelConfig
from napari_diffinfinite.model.pretrained import convert_official, load_model, new_model, save_pretrained
from napari_diffinfinite.testing import tiny_image_config


def test_save_load_roundtrip(tmp_path):
    model = new_model(tiny_image_config(), seed=5)
    folder = save_pretrained(model, tmp_path / "m")
    loaded = load_model(folder)
    assert loaded.config.to_dict() == model.config.to_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[k], v)
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_honour_the_umask(tmp_path, umask):
    # safetensors creates its file 0600: a shared model folder was unreadable to the group
    previous = os.umask(umask)
    try:
        folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name


def test_save_refuses_existing_folder(tmp_path):
    model = new_model(tiny_image_config())
    save_pretrained(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="already exists"):
        save_pretrained(model, tmp_path / "m")


def test_convert_official(official_image_checkpoint, tmp_path):
    out = convert_official(
        official_image_checkpoint, tmp_path / "conv", class_names=["unknown", "tumour", "stroma"], pixel_size_um=0.5
    )
    converted, original = load_model(out), load_model(official_image_checkpoint)
    assert converted.config.class_names == ["unknown", "tumour", "stroma"]
    assert converted.config.pixel_size_um == 0.5
    for k, v in original.unet.state_dict().items():
        assert torch.equal(converted.unet.state_dict()[k], v)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_image_config().to_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_model(tmp_path)


def test_corrupt_safetensors(tmp_path):
    folder = save_pretrained(new_model(tiny_image_config()), tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(folder)


def test_config_errors():
    data = tiny_image_config().to_dict()
    with pytest.raises(CheckpointError, match="unknown keys in model config: colour"):
        ModelConfig.from_dict({**data, "colour": 1})
    with pytest.raises(CheckpointError, match="class_names must have 3 entries, got 1"):
        ModelConfig.from_dict({**data, "class_names": ["a"]})
    with pytest.raises(CheckpointError, match="needs 48 channels, not 4"):
        ModelConfig.from_dict({**data, "unet": {**data["unet"], "channels": 4}})


def test_write_failure_leaves_nothing_and_keeps_the_old_model(tmp_path, monkeypatch):
    import errno

    from napari_diffinfinite.model import pretrained

    old = save_pretrained(new_model(tiny_image_config(), seed=1), tmp_path / "m")
    before = (old / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pretrained, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="cannot write .*No space left on device"):
        save_pretrained(new_model(tiny_image_config(), seed=2), tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (old / "model.safetensors").read_bytes() == before
