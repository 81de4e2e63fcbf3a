"""Benchmarks: the one home of the code that measures speed and quality.

* :mod:`.sampler`: the parallel sampler against the official one-patch-at-a-time loop
  (``diffinfinite bench``).
* :mod:`.overhead`: the sampler's own work per patch, with a zero-cost network
  (``diffinfinite bench --overhead``).
* :mod:`.decode`: the tiled decoder against one whole decode of an SD-2-architecture VAE.

``diffinfinite bench`` (:mod:`napari_diffinfinite.commands.bench`) is only the command-line
front end of these; the repository's top-level ``benchmarks/`` folder holds the scripts
that need a full checkout or a GPU (``gpu.sh``, the demo seam check, browsing).
"""
