"""``python -m napari_diffinfinite``: the ``diffinfinite`` command (also what torchrun runs per rank)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
