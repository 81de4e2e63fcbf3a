"""Cold open of a slide store by the napari reader, as napari's GUI thread pays it.

Each round starts a fresh interpreter that imports the reader and builds the layer data of
a store (what ``napari slide.zarr`` does before drawing), and reports the seconds and whether
torch was imported on the way. Runs ``--rounds`` times and prints the median as JSON.

    python benchmarks/reader_cold_open.py STORE.zarr [--rounds 5]
    PYTHONPATH=/path/to/old/src python benchmarks/reader_cold_open.py STORE.zarr   # other code
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import sys, time
started = time.perf_counter()
from napari_diffinfinite._reader import napari_get_reader
path = sys.argv[1]
layers = napari_get_reader(path)(path)
print(time.perf_counter() - started, 'torch' in sys.modules, len(layers))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seconds, torch_loaded = [], set()
    for _ in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", CHILD, args.store], capture_output=True, text=True, check=True)
        elapsed, torch, _layers = out.stdout.split()
        seconds.append(float(elapsed))
        torch_loaded.add(torch == "True")
    print(json.dumps({"store": args.store, "median_s": statistics.median(seconds), "runs_s": seconds,
                      "torch_imported": sorted(torch_loaded)}))  # fmt: skip


if __name__ == "__main__":
    main()
