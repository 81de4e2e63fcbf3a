import os
import pickle

import pytest
import torch

from napari_diffinfinite.errors import CheckpointError
from napari_diffinfinite.model.checkpoint import read_checkpoint
from napari_diffinfinite.model.pretrained import load_model, new_model
from napari_diffinfinite.testing import official_checkpoint_dict, tiny_image_config, write_official_checkpoint


def test_official_image_checkpoint_loads_ema_weights(tmp_path):
    model = new_model(tiny_image_config(codec="sd2-vae"), seed=3)
    data = official_checkpoint_dict(model)
    # make the online ("model") weights differ so we can tell which ones were loaded
    data["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in data["model"].items()}
    path = tmp_path / "model-10.pt"
    torch.save(data, path)
    loaded = load_model(path)
    assert loaded.config.kind == "image" and loaded.config.codec == "sd2-vae"
    assert loaded.config.unet.dim == 8 and loaded.config.unet.num_classes == 3
    for key, value in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


def test_official_mask_checkpoint_loads(official_mask_checkpoint):
    model = load_model(official_mask_checkpoint, num_labels=5)
    assert model.config.kind == "mask" and model.config.num_labels == 5
    assert len(model.config.class_names) == 5


def test_scheduler_objects_are_not_executed(official_image_checkpoint):
    data = read_checkpoint(official_image_checkpoint)
    anneal = data["scheduler"]["anneal_func"]
    assert type(anneal).__name__ == "OneCycleLR" and "not loaded" in repr(anneal)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("entry", ["ema", "scheduler", "top"])
def test_pickled_callable_is_refused_without_running(tmp_path, entry):
    marker = tmp_path / "pwned"
    model = new_model(tiny_image_config(codec="sd2-vae"))
    data = official_checkpoint_dict(model, with_scheduler_object=False)
    if entry == "top":
        data = _Exploit(marker)
    elif entry == "ema":
        data["ema"]["ema_model.model.init_conv.weight"] = _Exploit(marker)
    else:
        data["scheduler"] = {"hook": _Exploit(marker)}
    path = tmp_path / "model-1.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"(os|posix)\.system"):
        load_model(path)
    assert not marker.exists()


class _Evil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_eval_builtin_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"ema": _Evil()}, path)
    with pytest.raises(CheckpointError, match="builtins.eval"):
        load_model(path)


def test_plain_pickle_refused_without_unpickling(tmp_path):
    path = tmp_path / "x.pt"
    with open(path, "wb") as f:
        pickle.dump({"ema": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="plain pickle or a legacy PyTorch file"):
        load_model(path)


def test_truncated_file_is_refused(tmp_path, official_image_checkpoint):
    data = official_image_checkpoint.read_bytes()
    path = tmp_path / "model-1.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "model-1.pt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    model = new_model(tiny_image_config(codec="sd2-vae"))
    data = official_checkpoint_dict(model, with_scheduler_object=False)
    del data["ema"]["ema_model.model.final_conv.bias"]
    data["ema"]["ema_model.model.extra_layer.weight"] = torch.zeros(2)
    path = tmp_path / "model-1.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "missing keys: final_conv.bias" in message and "unexpected keys: extra_layer.weight" in message


def test_shape_mismatch_is_named(tmp_path):
    model = new_model(tiny_image_config(codec="sd2-vae"))
    data = official_checkpoint_dict(model, with_scheduler_object=False)
    data["ema"]["ema_model.model.final_conv.weight"] = torch.zeros(4, 9, 1, 1)
    path = tmp_path / "model-1.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"final_conv.weight: file \(4, 9, 1, 1\) vs network \(4, 8, 1, 1\)"):
        load_model(path)


def test_mask_model_where_image_expected(official_mask_checkpoint):
    with pytest.raises(CheckpointError, match="is a mask model .* but an image model is expected"):
        load_model(official_mask_checkpoint, expect="image")


def test_not_a_diffinfinite_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="no DiffInfinite weights"):
        load_model(path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("/nonexistent/model-3.pt")


def test_write_official_checkpoint_roundtrip(tmp_path):
    path = write_official_checkpoint(tmp_path / "m.pt")
    assert load_model(path).config.kind == "image"


class _ModeSpy:
    """Records in which modes :class:`torch_file._Unpickler` ran ("inspect" always; "load" = the inert fallback)."""

    def __init__(self, monkeypatch):
        from napari_diffinfinite.model import torch_file

        self.modes = []
        original = torch_file._Unpickler
        spy = self

        class Spy(original):
            def __init__(self, data, path, records, mode):
                spy.modes.append(mode)
                super().__init__(data, path, records, mode)

        monkeypatch.setattr(torch_file, "_Unpickler", Spy)


def test_torch20_scheduler_loads_through_weights_only(tmp_path, monkeypatch):
    """torch 2.0 pickled OneCycleLR.anneal_func as a bound method (getattr of the scheduler, its Adam inside)."""
    model = new_model(tiny_image_config(codec="sd2-vae"), seed=4)
    data = official_checkpoint_dict(model)
    scheduler = data["scheduler"]["anneal_func"]
    data["scheduler"] = {"anneal_func": scheduler.get_last_lr, "total_steps": 10}
    path = tmp_path / "model-2.pt"
    torch.save(data, path)
    spy = _ModeSpy(monkeypatch)
    loaded = load_model(path)
    assert spy.modes == ["inspect"]  # torch.load(weights_only=True) with the stand-ins read it
    for key, value in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


def test_other_framework_objects_load_through_the_inert_fallback(tmp_path, monkeypatch):
    """A global outside the stand-ins (here functools.partial) makes torch refuse; the inert loader reads it."""
    import functools

    model = new_model(tiny_image_config(codec="sd2-vae"), seed=6)
    data = official_checkpoint_dict(model, with_scheduler_object=False)
    data["scheduler"] = {
        "lr_lambda": functools.partial(torch.optim.lr_scheduler.LambdaLR, last_epoch=-1),
        "base": torch.ones(3),
    }
    path = tmp_path / "model-3.pt"
    torch.save(data, path)
    spy = _ModeSpy(monkeypatch)
    raw = read_checkpoint(path)
    assert spy.modes == ["inspect", "load"]
    assert "not loaded: functools.partial" in repr(raw["scheduler"]["lr_lambda"])
    assert torch.equal(raw["scheduler"]["base"], torch.ones(3))
    loaded = load_model(path)
    for key, value in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


def test_fallback_refuses_what_inspection_refuses(tmp_path):
    import functools

    data = official_checkpoint_dict(new_model(tiny_image_config(codec="sd2-vae")), with_scheduler_object=False)
    data["scheduler"] = {
        "lr_lambda": functools.partial(torch.optim.lr_scheduler.LambdaLR, last_epoch=-1),
        "hook": _Evil(),
    }
    path = tmp_path / "model-4.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="builtins.eval"):
        read_checkpoint(path)


def test_official_mask_checkpoint_with_ten_labels(official_mask_checkpoint):
    model = load_model(official_mask_checkpoint, num_labels=10)
    assert model.config.num_labels == 10 and len(model.config.class_colors) == 10


def test_tensor_with_attributes_loads_as_plain_weights(tmp_path):
    """torch.save pickles a tensor with Python attributes through _rebuild_from_type_v2(..., torch.Tensor, ...)."""
    model = new_model(tiny_image_config(codec="sd2-vae"), seed=2)
    data = official_checkpoint_dict(model, with_scheduler_object=False)
    data["ema"]["ema_model.model.final_conv.bias"].note = "tagged"
    path = tmp_path / "model-5.pt"
    torch.save(data, path)
    loaded = load_model(path)
    assert torch.equal(loaded.unet.final_conv.bias, model.unet.final_conv.bias)


def test_tensor_class_as_constructor_is_refused(tmp_path):
    class Alloc:
        def __reduce__(self):
            return (torch.Tensor, (10**10,))

    data = official_checkpoint_dict(new_model(tiny_image_config(codec="sd2-vae")), with_scheduler_object=False)
    data["loss"] = Alloc()
    path = tmp_path / "model-6.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="refusing to load .* legacy constructor torch.Tensor"):
        load_model(path)
