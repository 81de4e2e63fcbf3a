"""The training loop: loss goes down, checkpoints round-trip, --resume is exact, sparse data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_diffinfinite.errors import TrainingError
from napari_diffinfinite.model.codec import IdentityCodec
from napari_diffinfinite.model.pretrained import load_model, new_model
from napari_diffinfinite.training.configs import make_model_config
from napari_diffinfinite.training.datasets import TissueCondition
from napari_diffinfinite.training.ema import EMA
from napari_diffinfinite.training.objectives import ImageObjective
from napari_diffinfinite.training.runner import build_dataset, build_objective, build_sources, run_training
from napari_diffinfinite.training.trainer import STATE_NAME, Trainer, TrainSettings, load_training_state

from .conftest import TINY_UNET

FAST = {"num_samples": 0, "log_every": 1, "warmup_steps": 0}


def _trainer(config, tiles, out, resume=False, **settings) -> Trainer:
    dataset = build_dataset(config, build_sources(config, tiles=[tiles]),
                            condition=TissueCondition(background=1) if config.kind == "mask" else None)  # fmt: skip
    values = {**FAST, "batch_size": 4, **settings}
    s = TrainSettings(**values)
    codec = IdentityCodec(config.pixel_unshuffle)
    return Trainer(new_model(config, seed=0), build_objective(config, codec, s), dataset, s, out, device="cpu",
                   resume=resume, show_progress_bar=False)  # fmt: skip


def _fixed_loss(trainer: Trainer) -> float:
    """Loss of the online model on a fixed batch with fixed timesteps and noise."""
    batch = trainer.dataset.batch([(99, 0, 0, i) for i in range(8)])
    trainer.unet.eval()
    with torch.no_grad():
        loss, _ = trainer.objective.loss(trainer.unet, batch, torch.Generator().manual_seed(1), trainer.device)
    trainer.unet.train()
    return float(loss)


def test_a_few_steps_lower_the_loss(tiles: Path, image_config, tmp_path: Path) -> None:
    trainer = _trainer(image_config, tiles, tmp_path / "run", steps=20, lr=3e-3, checkpoint_every=1000)
    before = _fixed_loss(trainer)
    result = trainer.train()
    after = _fixed_loss(trainer)
    assert result.step == 20 and result.stopped == "done"
    assert after < 0.85 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and any("checkpoint" in row for row in log)


def test_checkpoints_round_trip_in_our_format(tiles: Path, image_config, tmp_path: Path) -> None:
    trainer = _trainer(image_config, tiles, tmp_path / "run", steps=3, checkpoint_every=2, num_samples=1,
                       sample_steps=2)  # fmt: skip
    trainer.train()
    step2 = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert (step2 / "samples.png").is_file() and (tmp_path / "run" / "model" / "samples.png").is_file()
    loaded = load_model(tmp_path / "run" / "model")
    assert loaded.config.to_dict() == image_config.to_dict()
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([10, 500])
    mask = torch.ones(2, 1, 16, 16)
    ema = trainer.ema.ema_model
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in loaded.unet.state_dict().items())
    # the preview sampler ran the EMA network channels-last (the sampler's CPU default), which
    # rounds differently: compare the outputs in one memory format
    ema.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t, mask), ema(x, t, mask))
    state = torch.load(tmp_path / "run" / STATE_NAME, map_location="cpu", weights_only=True)
    assert state["step"] == 3 and set(state) >= {"model", "ema", "optimizer", "scaler", "settings", "model_config"}


def test_resume_continues_at_the_same_step_with_the_same_state(tiles: Path, image_config, tmp_path: Path) -> None:
    first = _trainer(image_config, tiles, tmp_path / "split", steps=3, checkpoint_every=100)
    first.train()
    saved_opt = first.optimizer.state_dict()
    with pytest.raises(TrainingError, match="pass --resume"):
        _trainer(image_config, tiles, tmp_path / "split", steps=5)
    resumed = _trainer(image_config, tiles, tmp_path / "split", resume=True, steps=5, checkpoint_every=100)
    assert resumed.step == 3 and resumed.ema.step == first.ema.step
    for key, value in saved_opt["state"].items():
        for name, tensor in value.items():
            assert torch.equal(resumed.optimizer.state_dict()["state"][key][name], tensor)
    resumed.train()
    straight = _trainer(image_config, tiles, tmp_path / "straight", steps=5, checkpoint_every=100)
    straight.train()
    for a, b in zip(resumed.unet.state_dict().values(), straight.unet.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(TrainingError, match="different settings.*batch_size"):
        _trainer(image_config, tiles, tmp_path / "split", resume=True, steps=6, batch_size=2)


def test_resume_allows_new_sampling_defaults_but_not_a_new_network(tiles: Path, image_config, tmp_path: Path) -> None:
    _trainer(image_config, tiles, tmp_path / "run", steps=2, checkpoint_every=100).train()
    fewer_steps = replace(image_config, sampling_steps=image_config.sampling_steps // 2, description="changed")
    assert _trainer(fewer_steps, tiles, tmp_path / "run", resume=True, steps=3).step == 2
    other = replace(image_config, timesteps=image_config.timesteps // 2)
    with pytest.raises(TrainingError, match="configuration differs.*timesteps"):
        _trainer(other, tiles, tmp_path / "run", resume=True, steps=3)


def test_sparse_tiles_train_both_branches(tiles: Path, image_config, tmp_path: Path) -> None:
    trainer = _trainer(image_config, tiles, tmp_path / "run", steps=4, cond_drop_prob=0.0, checkpoint_every=100)
    initial = trainer.unet.classes_emb.weight.detach().clone()
    result = trainer.train()
    assert result.branches.conditional > 0 and result.branches.unconditional > 0
    moved = (trainer.unet.classes_emb.weight.detach() - initial).abs().sum(dim=1)
    assert moved[0] > 0 and moved[2] > 0  # unconditional (0) and largest-label (2) embeddings both trained


def test_condition_dropout_and_per_label_masks(image_config) -> None:
    labels = torch.zeros(64, 4, 4, dtype=torch.long)
    labels[:, :2] = 1
    labels[:, 2:] = 2
    objective = ImageObjective(image_config, IdentityCodec(2), cond_drop_prob=0.25, mask_mode="per-label")
    masks, counts = objective.conditions(labels, torch.Generator().manual_seed(0))
    single = [set(torch.unique(m).tolist()) for m in masks]
    assert all(s in ({0}, {0, 1}, {0, 2}) for s in single)
    assert counts.unconditional + counts.conditional == 64 and 5 <= counts.unconditional <= 30
    assert counts.per_label.get(1, 0) > 0 and counts.per_label.get(2, 0) > 0
    with pytest.raises(TrainingError, match="label 5 but the model has 3 classes"):
        objective.conditions(torch.full((1, 4, 4), 5), torch.Generator())


def test_mask_model_trains_with_null_and_conditions(tiles: Path, mask_config, tmp_path: Path) -> None:
    trainer = _trainer(mask_config, tiles, tmp_path / "run", steps=6, cond_drop_prob=0.3, checkpoint_every=100,
                       num_samples=1, sample_steps=2)  # fmt: skip
    result = trainer.train()
    assert result.branches.conditional > 0 and result.branches.unconditional > 0
    assert load_model(tmp_path / "run" / "model").config.kind == "mask"
    assert (tmp_path / "run" / "model" / "samples.png").is_file()


def test_run_training_needs_a_vae_for_latent_models(tiles: Path, tmp_path: Path) -> None:
    config = make_model_config("image", preset="official", class_names="a,b", unet={"dim": 8})
    with pytest.raises(TrainingError, match="--vae"):
        run_training(new_model(config), None, TrainSettings(), tmp_path)


def test_identity_init_predicts_the_input() -> None:
    from napari_diffinfinite.training.init import identity_skip_init

    wide = {**TINY_UNET, "dim": 16}
    image_config = make_model_config("image", class_names="a,b", unet=wide, patch_size=32, pixel_unshuffle=2)
    mask_config = make_model_config("mask", class_names="a,b", condition_names=["any", "tissue"], unet=wide,
                                    patch_size=16, pixel_unshuffle=2)  # fmt: skip
    image = identity_skip_init(new_model(image_config).unet).eval()
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        assert torch.allclose(image(x, torch.tensor([3, 900]), torch.ones(2, 1, 16, 16)), x, atol=1e-5)
    masks = identity_skip_init(new_model(mask_config).unet).eval()
    with torch.no_grad():
        out = masks(x[:, :12, :8, :8], torch.tensor([3, 900]), torch.tensor([0, 1]), torch.tensor([False, True]))
    assert torch.allclose(out, x[:, :12, :8, :8], atol=1e-5)
    narrow = make_model_config("image", class_names="a", unet={**TINY_UNET, "dim": 8}, patch_size=32, pixel_unshuffle=4)
    with pytest.raises(TrainingError, match="dim 8.*48"):
        identity_skip_init(new_model(narrow).unet)


def test_ema_follows_ema_pytorch_schedule() -> None:
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, beta=0.995, update_every=10, update_after_step=100)
    for _ in range(101):
        ema.update(net)
    assert ema.current_decay() == 0.0
    ema.step = 1000
    assert ema.current_decay() == pytest.approx(1 - (1 + 899) ** (-2 / 3))
    ema.step = 10**6
    assert ema.current_decay() == 0.995


def test_bad_state_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_NAME).write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="not a readable training state"):
        load_training_state(tmp_path / STATE_NAME)
    torch.save({"format": "something else"}, tmp_path / STATE_NAME)
    with pytest.raises(TrainingError, match="not a napari-diffinfinite training state"):
        load_training_state(tmp_path / STATE_NAME)


def deflated_torch_zip(path: Path, numel: int = 1 << 22) -> Path:
    """A torch.save zip whose storage record is deflated: a few kB on disk, ``4 * numel`` bytes loaded."""
    import zipfile

    plain = path.with_suffix(".plain")
    torch.save({"format": "x", "w": torch.zeros(numel)}, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    plain.unlink()
    return path


def test_a_deflated_state_file_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """A zip bomb: 16 MB of storage in a file of a few kB (1000 x more in a 20 MB file)."""
    bomb = deflated_torch_zip(tmp_path / STATE_NAME)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(TrainingError, match="declares 16,777,216 bytes, more than the file"):
        load_training_state(bomb)
