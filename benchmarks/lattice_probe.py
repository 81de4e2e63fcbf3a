"""Probe an image model for the lattice of its pixel unshuffle: the x0 estimate's phase profile.

Cuts 32 tiles of 128 px that are at least 95 % one class out of the demo training slide (read
at 2 um/px on the trainer's grid, labels derived as for training), noises them to each ``t``,
asks the model for v (or the noise) with that class's label map, and folds the mean |gradient|
of the x0 estimate by position modulo the unshuffle factor, along x and along y, each divided
by its mean. A model without a lattice reads about 1.0 at every phase, as the real tiles do
(printed first). Also prints the x0 estimate's MSE, so that a flatter profile bought with a
worse estimate shows. The penalty that removes the lattice: ``--lattice-weight`` of
``diffinfinite train`` (docs/training.md); results in docs/model-card.md ("Seam score").

    OMP_NUM_THREADS=1 python benchmarks/lattice_probe.py                       # the embedded model, dermis
    OMP_NUM_THREADS=1 python benchmarks/lattice_probe.py --model DIR --label 1 # another model, glass tiles
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from napari_diffinfinite import engine
from napari_diffinfinite.sampling.schedule import Schedule
from napari_diffinfinite.training import demo_data
from napari_diffinfinite.training.objectives import phase_profile, x0_estimate


def tiles_of_class(label: int, count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 3, size, size) tiles in [0, 1], each at least 95 % ``label``, at 4 px aligned corners."""
    rgb, pixel = demo_data.read_slide_rgb(demo_data.demo_slide(), demo_data.DEMO_DOWNSAMPLE)
    labels = demo_data.derive_labels(rgb, pixel).labels
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(200_000):
        y, x = 4 * rng.integers(0, (rgb.shape[0] - size) // 4), 4 * rng.integers(0, (rgb.shape[1] - size) // 4)
        if (labels[y : y + size, x : x + size] == label).mean() >= 0.95:
            tiles.append(rgb[y : y + size, x : x + size])
            if len(tiles) == count:
                return torch.tensor(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    raise SystemExit(f"the demo slide has fewer than {count} tiles of {size} px that are 95 % label {label}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="image model folder (default: the embedded demo model)")
    p.add_argument("--label", type=int, default=2, help="class of the tiles (demo: 1 background, 2 dermis)")
    p.add_argument("--t", type=int, nargs="+", default=[10, 30, 60, 100, 200, 400], help="timesteps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = engine.load_image_model(args.model)
    codec = engine.load_codec(None, model)
    factor = model.config.pixel_unshuffle
    if model.config.codec != "identity" or factor < 2:
        raise SystemExit("the probe is for pixel models with a pixel unshuffle (their block lattice)")
    net = model.unet.eval()
    images = tiles_of_class(args.label, 32, model.config.patch_size, args.seed)
    x0 = codec.encode(images).float()
    schedule = Schedule(1, 1.0, model.config.timesteps)
    masks = torch.full((len(x0), 1, *x0.shape[-2:]), float(args.label))
    generator = torch.Generator().manual_seed(args.seed)

    def profile(pixels: torch.Tensor) -> str:
        rows = phase_profile(pixels, factor).mean(dim=0).numpy()
        return "x " + " / ".join(f"{v:.3f}" for v in rows[0]) + "   y " + " / ".join(f"{v:.3f}" for v in rows[1])

    print(f"{model.source}, label {args.label}, {len(x0)} tiles, period {factor}")
    print(f"real tiles   {profile(images)}")
    for t in args.t:
        steps = torch.full((len(x0),), t)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = schedule.q_sample(x0, steps, noise)
        with torch.no_grad():
            estimate = x0_estimate(model.config.objective, schedule, x_t, net(x_t, steps, masks), steps)
        mse = F.mse_loss(estimate, x0).item()
        print(f"t = {t:4d}     {profile(F.pixel_shuffle(estimate, factor))}   x0 MSE {mse:.5f}")


if __name__ == "__main__":
    main()
