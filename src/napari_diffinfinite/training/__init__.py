"""Training DiffInfinite image and mask models on tiles or whole-slide images.

* :mod:`.datasets`: tile folders and slides (OpenSlide + QuPath GeoJSON) as keyed datasets
* :mod:`.augment`: flips and 90-degree rotations, identical for a tile and its labels
* :mod:`.objectives`: the L2 noise-prediction losses with condition dropout
* :mod:`.ema`: ema_pytorch-compatible moving average of the weights
* :mod:`.init`: the optional identity initialisation (start as ``eps = x_t``)
* :mod:`.trainer`: the loop (AMP, clipping, checkpoints, ``--resume``, DDP via torchrun)
* :mod:`.distributed`: joining a torchrun process group, DistributedDataParallel
* :mod:`.previews`: the sample images written with every checkpoint
* :mod:`.configs`: model configurations from presets and class names
* :mod:`.runner`: the pieces put together, for the CLI and the demo recipe
* :mod:`.demo_data`: the demo's training slide and its derived label map
* :mod:`.metrics`: the distances the demo model card reports
"""

from __future__ import annotations

from .trainer import Trainer, TrainResult, TrainSettings, load_training_state

__all__ = ["TrainResult", "Trainer", "TrainSettings", "load_training_state"]
