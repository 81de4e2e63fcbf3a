"""Seam check of the README's demo slide: folded-gradient seam ratio per axis.

Generates the demo slide (embedded demo models, seed 0, 25 steps as in the issue, 2048 x 2048)
with ``diffinfinite generate`` in this process, then scores level 0 of the store with
:func:`napari_diffinfinite.evaluation.seams.seam_scores` at the 128 px patch period: the
mean absolute luminance gradient folded modulo the period, max / median per axis. Target
(issue 10): at most 1.03 on both axes. The same score at periods where no patch grid lies
(``control_*``) is the floor the texture alone reaches on an image of this size; the ratio of
the two (``seam_excess_*``) is what the patch grid adds. Prints one JSON object.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/seams_demo.py --out /tmp/demo.zarr
    python benchmarks/seams_demo.py --out /tmp/demo.zarr --score-only        # re-score a store
    python benchmarks/seams_demo.py --out /tmp/d.zarr --context 0            # cells without context
    python benchmarks/seams_demo.py --out /tmp/d.zarr --model OLD/image --mask-model OLD/mask  # other models

``--context`` (latent px on each side of a cell, -1 = the sampler's default) and
``--context-from`` (share of the schedule from which cells have it) override the sampler's
cell context, to measure its effect.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import zarr

from napari_diffinfinite import cli
from napari_diffinfinite.errors import StoreError
from napari_diffinfinite.evaluation.seams import seam_scores
from napari_diffinfinite.sampling import sampler as sampler_module
from napari_diffinfinite.slide.store import SlideStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="2048x2048")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--context", type=int, default=-1)
    p.add_argument("--context-from", type=float)
    p.add_argument("--model", help="image model folder (default: the embedded demo model)")
    p.add_argument("--mask-model", help="mask model folder (default: the embedded demo mask model)")
    args = p.parse_args()
    if args.context >= 0 or args.context_from is not None:
        original = sampler_module.RandomPatchSampler.__init__

        def patched(self, *a, **kw):
            if args.context >= 0:
                kw["context"] = args.context
            if args.context_from is not None:
                kw["context_from"] = args.context_from
            original(self, *a, **kw)

        sampler_module.RandomPatchSampler.__init__ = patched
    seconds = None
    if not args.score_only:
        started = time.perf_counter()
        argv = [
            "generate",
            "--out",
            args.out,
            "--size",
            args.size,
            "--seed",
            str(args.seed),
            "--steps",
            str(args.steps),
        ]
        for option in ("model", "mask_model"):
            if getattr(args, option):
                argv += ["--" + option.replace("_", "-"), getattr(args, option)]
        argv += ["--overwrite", "-q"]
        if cli.main(argv) != 0:
            raise SystemExit("generate failed")
        seconds = time.perf_counter() - started
    image = np.moveaxis(np.asarray(zarr.open_group(args.out, mode="r")["0"]), 0, -1)  # (H, W, 3) uint8
    # control periods: the same score where no patch grid lies; the texture alone reaches it
    controls = (96, 112, 120, 136, 144, 160)
    every = seam_scores(image, periods=(128, *controls))
    scores = every[128]
    floor_x = float(np.median([every[p].x.score for p in controls]))
    floor_y = float(np.median([every[p].y.score for p in controls]))
    # the evaluation's score with the layout (class borders left out, per-class normalised);
    # periods 127 and 129 share no divisor with the 4 px pixel-unshuffle block or 2 px patterns
    store = SlideStore.open(args.out)
    try:
        labels = np.asarray(store.label_level(0)[:])
    except StoreError:  # a slide generated without a layout
        labels = None
    # what the store was generated with (with --score-only, not necessarily this run's arguments)
    provenance = store.provenance
    with_layout = seam_scores(image, periods=(128, 127, 129), labels=labels)
    result = {
        "store": args.out,
        "size": f"{image.shape[1]}x{image.shape[0]}",  # WIDTHxHEIGHT, as --size
        "seed": provenance.get("seed"),
        "steps": provenance.get("steps"),
        "context": args.context,
        "context_from": args.context_from,
        "model": args.model,
        "mask_model": args.mask_model,
        "seconds": seconds,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "seam_x": scores.x.score,
        "seam_x_phase": scores.x.phase,
        "seam_y": scores.y.score,
        "seam_y_phase": scores.y.phase,
        "control_periods": list(controls),
        "control_x_median": floor_x,
        "control_y_median": floor_y,
        "seam_excess_x": scores.x.score / floor_x,
        "seam_excess_y": scores.y.score / floor_y,
        "with_layout": {str(p): {"x": v.x.score, "y": v.y.score} for p, v in with_layout.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
